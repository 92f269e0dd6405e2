//! Fuzz target: arbitrary bytes decoded as a csai.v1 request (the first byte picks the
//! RPC) and handled by the real services over an in-memory store and the echo provider.
//! Any input must give an answer or a status, never a panic.
#![no_main]

use csai_sidecar::chat::turn::ChatEngine;
use csai_sidecar::config::{self, Config};
use csai_sidecar::settings::Source;
use csai_sidecar::grpc::chat::ChatService;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::chat_server::Chat;
use csai_sidecar::grpc::pb::session_store_server::SessionStore;
use csai_sidecar::grpc::session_store::{Feeds, SessionStoreService};
use csai_sidecar::service::Policy;
use csai_sidecar::store::changes::ChangeHub;
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::{Arc, LazyLock};
use tonic::Request;

struct Services {
    runtime: tokio::runtime::Runtime,
    sessions: SessionStoreService,
    chat: ChatService,
}

static SERVICES: LazyLock<Services> = LazyLock::new(|| {
    let mut values = config::defaults();
    values.set("chat_echo", "true".into(), Source::Env("CSAI_CHAT_ECHO"));
    let config: Config = config::parse(&values).expect("config");
    let store = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let engine = ChatEngine::new(&config.chat).expect("chat engine");
    Services {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        sessions: SessionStoreService::new(
            store.clone(),
            csai_sidecar::store::stats_cache::StatsCache::new(
                store.clone(),
                config.stats_refresh_interval,
            ),
            Policy::from_config(&config),
            Feeds {
                hub: ChangeHub::new(config.watch_max_watchers),
                buffer: config.watch_buffer,
            },
        ),
        chat: ChatService::new(Arc::new(engine), store, Policy::from_config(&config)),
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, body)) = data.split_first() else {
        return;
    };
    let services = &*SERVICES;
    services.runtime.block_on(async {
        macro_rules! call {
            ($service:expr, $method:ident, $request:ty) => {
                if let Ok(request) = <$request>::decode(body) {
                    let _ = $service.$method(Request::new(request)).await;
                }
            };
        }
        let sessions = &services.sessions;
        match rpc % 12 {
            0 => call!(sessions, get_session, pb::GetSessionRequest),
            1 => call!(sessions, append_messages, pb::AppendMessagesRequest),
            2 => call!(sessions, replace_messages, pb::ReplaceMessagesRequest),
            3 => call!(sessions, set_system_messages, pb::SetSystemMessagesRequest),
            4 => call!(sessions, update_state, pb::UpdateStateRequest),
            5 => call!(sessions, touch_session, pb::TouchSessionRequest),
            6 => call!(sessions, delete_session, pb::DeleteSessionRequest),
            7 => call!(sessions, list_sessions, pb::ListSessionsRequest),
            8 => call!(sessions, record_feedback, pb::RecordFeedbackRequest),
            // The streams are dropped unread: what is fuzzed is the request's checks.
            10 => call!(sessions, watch_session, pb::WatchSessionRequest),
            11 => call!(sessions, watch_sessions, pb::WatchSessionsRequest),
            _ => call!(services.chat, exec, pb::ExecRequest),
        }
    });
});
