//! Calls of the model: the provider a turn asked for, its fallback when the first fails,
//! and the metrics and labels of each call.

use super::*;

impl ChatEngine {
    pub(super) fn provider(&self, name: Option<&str>) -> Result<&Provider, TurnError> {
        let name = match name {
            Some(name) => name,
            None => self
                .default_provider
                .as_deref()
                .ok_or(TurnError::NoProvider)?,
        };
        self.providers.get(name).ok_or_else(|| {
            TurnError::Invalid(format!(
                "provider: no provider is named {name:?}; configured: {}",
                self.providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The `model` label of a turn's metrics: see [`Provider::model_label`].
    pub(super) fn model_label(&self, provider: &str, message: &NewMessage) -> String {
        self.providers
            .get(provider)
            .map(|p| p.model_label(message.model.as_deref().unwrap_or(&p.settings.model)))
            .unwrap_or_default()
            .to_string()
    }

    /// One model answer, with the fallback provider after a retryable failure and one
    /// corrective retry when the answer has the wrong format.
    pub(super) async fn complete(
        &self,
        primary: &Provider,
        request: &TurnRequest,
        mut messages: Vec<NewMessage>,
        at_tool_limit: bool,
        bot: &mut dyn Bot,
    ) -> Result<(Completion, String), TurnError> {
        let mut corrected = false;
        loop {
            let (completion, by) = self
                .complete_with_fallback(primary, request, &messages, at_tool_limit, bot)
                .await?;
            let problem = if completion.message.tool_calls.is_empty() {
                format::mismatch(&request.response_format, &completion.message.content)
            } else {
                None
            };
            let Some(problem) = problem else {
                return Ok((completion, by));
            };
            if corrected {
                return Err(TurnError::Format(problem));
            }
            tracing::info!(session = %crate::observability::telemetry::logged(request.session.as_str()), %problem, "answer has the wrong format; asking once more");
            corrected = true;
            messages.push(completion.message);
            messages.push(NewMessage::text(Role::User, format::correction(&problem)));
        }
    }

    pub(super) async fn complete_with_fallback(
        &self,
        primary: &Provider,
        request: &TurnRequest,
        messages: &[NewMessage],
        at_tool_limit: bool,
        bot: &mut dyn Bot,
    ) -> Result<(Completion, String), TurnError> {
        let fallback = self
            .fallback_provider
            .as_deref()
            .filter(|name| *name != primary.name())
            .and_then(|name| self.providers.get(name));
        let mut streamed = false;
        let first = self
            .call(
                primary,
                request,
                messages,
                at_tool_limit,
                bot,
                &mut streamed,
                true,
            )
            .await;
        match (first, fallback) {
            (Ok(completion), _) => Ok((completion, primary.name().to_string())),
            (Err(error), Some(fallback)) if error.is_retryable() && !streamed => {
                tracing::warn!(%error, fallback = fallback.name(), "primary provider failed; trying the fallback");
                let completion = self
                    .call(
                        fallback,
                        request,
                        messages,
                        at_tool_limit,
                        bot,
                        &mut streamed,
                        false,
                    )
                    .await?;
                Ok((completion, fallback.name().to_string()))
            }
            (Err(error), _) => Err(error.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call(
        &self,
        provider: &Provider,
        request: &TurnRequest,
        messages: &[NewMessage],
        at_tool_limit: bool,
        bot: &mut dyn Bot,
        streamed: &mut bool,
        is_primary: bool,
    ) -> Result<Completion, ProviderError> {
        let settings = &provider.settings;
        // A requested model names a model of the requested provider, not the fallback's.
        let model = match (&request.overrides.model, is_primary) {
            (Some(model), true) => model.clone(),
            _ => settings.model.clone(),
        };
        let completion = CompletionRequest {
            model,
            messages: messages.to_vec(),
            tools: request.tools.clone(),
            tool_choice: if at_tool_limit {
                ToolChoice::None
            } else {
                request.tool_choice.clone()
            },
            sampling: request.overrides.apply(&settings.defaults),
            response_format: request.response_format.clone(),
        };
        if bot.streams() {
            let mut forward = |delta: Delta| {
                *streamed = true;
                bot.delta(delta);
            };
            provider.complete(&completion, Some(&mut forward)).await
        } else {
            provider.complete(&completion, None).await
        }
    }
}
