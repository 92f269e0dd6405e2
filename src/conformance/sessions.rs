//! Conformance of session reads and writes: seqs, versions, idempotency, windows,
//! replace, system messages, state, delete and contents that round-trip.

use super::*;

/// Reading a session that was never written is NotFound.
pub async fn get_absent_session_is_not_found(store: TestStore) {
    let id = unique_id("absent");
    must_be_absent(&store, &id).await;
    match store.touch(&id, TTL).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("touch of an absent session: expected NotFound, got {other:?}"),
    }
}

/// Appends create the session and assign 1-based consecutive seqs; versions increase.
pub async fn append_assigns_gap_free_seqs(store: TestStore) {
    let id = unique_id("seqs");
    let before = SystemTime::now();
    let first = store
        .append(&id, append_of(vec![user("a"), user("b")]))
        .await
        .expect("first append");
    let after = SystemTime::now();
    assert_eq!(first.seqs().collect::<Vec<_>>(), vec![1, 2]);
    assert!(!first.deduplicated);
    assert_between(
        first.expire_time,
        before + TTL,
        after + TTL,
        "expire_time of the append",
    );

    let second = store
        .append(&id, append_of(vec![user("c")]))
        .await
        .expect("second append");
    assert_eq!(second.seqs().collect::<Vec<_>>(), vec![3]);
    assert!(second.version > first.version, "version must increase");

    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(seqs(&session.messages), vec![1, 2, 3]);
    assert_eq!(contents(&session.messages), vec!["a", "b", "c"]);
    assert_eq!(session.message_count, 3);
    assert_eq!(session.version, second.version);
    assert!(session.create_time <= session.update_time);
    assert_between(session.create_time, before, after, "create_time");
    assert_eq!(session.expire_time, second.expire_time);
    for message in &session.messages[..2] {
        assert_between(message.create_time, before, after, "message create_time");
    }
}

/// 32 concurrent writers append to one session: nothing is lost, seqs are gap-free and
/// each writer's messages keep their order.
pub async fn concurrent_appends_lose_nothing(store: TestStore) {
    appends_from_many_writers(&[store], 32, 10).await;
}

/// `writers` tasks each make `appends` appends of two messages to one session, writer `w`
/// through `stores[w % stores.len()]` (several stores on one backend stand for several
/// sidecar replicas): every message arrives once, seqs are gap-free, each batch stays
/// together and each writer's appends keep their order.
pub async fn appends_from_many_writers(stores: &[TestStore], writers: usize, appends: usize) {
    let id = unique_id("concurrent");
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (store, id) = (stores[writer % stores.len()].clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..appends {
                let batch = vec![
                    user(&format!("{writer}:{n}:0")),
                    user(&format!("{writer}:{n}:1")),
                ];
                let outcome = store.append(&id, append_of(batch)).await.expect("append");
                assert_eq!(outcome.count, 2);
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let session = stores[0].get(&id, Window::All).await.expect("get");
    let total = writers * appends * 2;
    assert_eq!(session.messages.len(), total, "messages lost or duplicated");
    assert_eq!(
        seqs(&session.messages),
        (1..=total as u64).collect::<Vec<_>>()
    );
    let mut next = vec![0usize; writers];
    for pair in session.messages.chunks(2) {
        // A batch is atomic: its two messages are adjacent.
        let first: Vec<&str> = pair[0].body.content.split(':').collect();
        assert_eq!(pair[1].body.content, format!("{}:{}:1", first[0], first[1]));
        let writer: usize = first[0].parse().expect("writer number");
        let n: usize = first[1].parse().expect("append number");
        assert_eq!(n, next[writer], "writer {writer}'s appends out of order");
        next[writer] += 1;
    }
    assert!(next.iter().all(|&n| n == appends));
}

/// A wrong `expected_version` fails every kind of write with VersionMismatch and changes
/// nothing; a right one succeeds; 0 means "must not exist".
pub async fn expected_version_guards_every_write(store: TestStore) {
    let id = unique_id("occ");
    let guarded = |version: u64| WriteOptions {
        expected_version: Some(version),
        ttl: TTL,
    };
    let created = store
        .append(
            &id,
            Append {
                options: guarded(0),
                ..append_of(vec![user("first")])
            },
        )
        .await
        .expect("create with expected_version 0");
    let version = created.version;
    let before = store.get(&id, Window::All).await.expect("get");

    let stale = version + 7;
    let mismatch = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::VersionMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (stale, version), "{what}");
        }
        other => panic!("{what}: expected VersionMismatch, got {other:?}"),
    };
    mismatch(
        store
            .append(
                &id,
                Append {
                    options: guarded(stale),
                    ..append_of(vec![user("lost")])
                },
            )
            .await
            .map(drop),
        "append",
    );
    mismatch(
        store
            .replace(&id, vec![user("x")], guarded(stale))
            .await
            .map(drop),
        "replace",
    );
    mismatch(
        store
            .set_system_messages(
                &id,
                vec![NewMessage::text(Role::System, "s")],
                guarded(stale),
            )
            .await
            .map(drop),
        "set_system_messages",
    );
    mismatch(
        store
            .update_state(
                &id,
                StateUpdate::Replace(object(json!({"k": 1}))),
                guarded(stale),
            )
            .await
            .map(drop),
        "update_state",
    );
    mismatch(store.delete(&id, Some(stale)).await.map(drop), "delete");
    match store
        .append(
            &id,
            Append {
                options: guarded(0),
                ..append_of(vec![user("dup")])
            },
        )
        .await
    {
        Err(StoreError::VersionMismatch {
            expected: 0,
            actual,
        }) => assert_eq!(actual, version),
        other => panic!("expected_version 0 on an existing session: got {other:?}"),
    }

    let after = store.get(&id, Window::All).await.expect("get");
    assert_eq!(after, before, "a failed write changed the session");

    let next = store
        .append(
            &id,
            Append {
                options: guarded(version),
                ..append_of(vec![user("second")])
            },
        )
        .await
        .expect("append at the right version");
    assert!(next.version > version);
    assert!(
        store
            .delete(&id, Some(next.version))
            .await
            .expect("delete at the right version")
    );
}

/// A retried append with the same request_id returns the first result and appends nothing.
pub async fn request_id_makes_append_idempotent(store: TestStore) {
    let id = unique_id("idem");
    let with_id = |request_id: &str, content: &str| Append {
        request_id: Some(request_id.into()),
        ..append_of(vec![user(content), user(content)])
    };
    let first = store
        .append(&id, with_id("req-1", "one"))
        .await
        .expect("first");
    let other = store
        .append(&id, with_id("req-2", "two"))
        .await
        .expect("other");
    let retry = store
        .append(&id, with_id("req-1", "one"))
        .await
        .expect("retry");
    assert!(retry.deduplicated, "retry must be recognised");
    assert_eq!(
        retry.seqs().collect::<Vec<_>>(),
        first.seqs().collect::<Vec<_>>()
    );
    assert_eq!(retry.version, first.version);
    // Recognised even when the caller's expected_version is stale by now.
    let stale_retry = store
        .append(
            &id,
            Append {
                options: WriteOptions {
                    expected_version: Some(first.version - 1),
                    ttl: TTL,
                },
                ..with_id("req-2", "two")
            },
        )
        .await
        .expect("stale retry");
    assert!(stale_retry.deduplicated);
    assert_eq!(stale_retry.first_seq, other.first_seq);

    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(
        contents(&session.messages),
        vec!["one", "one", "two", "two"]
    );
    assert_eq!(
        session.version, other.version,
        "a deduplicated retry must not bump the version"
    );
}

/// last_n, after_seq and all select the right messages.
pub async fn windows_select_messages(store: TestStore) {
    let id = unique_id("window");
    let messages = (1..=10).map(|n| user(&format!("m{n}"))).collect();
    store
        .append(&id, append_of(messages))
        .await
        .expect("append");

    let get = |window| {
        let (store, id) = (store.clone(), id.clone());
        async move { store.get(&id, window).await.expect("get") }
    };
    assert_eq!(seqs(&get(Window::LastN(3)).await.messages), vec![8, 9, 10]);
    assert_eq!(seqs(&get(Window::LastN(50)).await.messages).len(), 10);
    assert_eq!(
        seqs(&get(Window::AfterSeq(7)).await.messages),
        vec![8, 9, 10]
    );
    assert_eq!(seqs(&get(Window::AfterSeq(0)).await.messages).len(), 10);
    assert!(get(Window::AfterSeq(10)).await.messages.is_empty());
    assert!(get(Window::AfterSeq(99)).await.messages.is_empty());
    let all = get(Window::All).await;
    assert_eq!(all.messages.len(), 10);
    let window = get(Window::LastN(2)).await;
    assert_eq!(
        window.message_count, 10,
        "message_count counts the whole session"
    );
    assert_eq!(window.version, all.version);
}

/// A last-N window never starts with tool results cut from their assistant message.
pub async fn last_n_window_is_tool_safe(store: TestStore) {
    let id = unique_id("toolsafe");
    let messages = vec![
        user("where are my orders?"),                       // 1
        assistant_calling(&["call_a", "call_b", "call_c"]), // 2
        tool_result("call_a"),                              // 3
        tool_result("call_b"),                              // 4
        tool_result("call_c"),                              // 5
        NewMessage::text(Role::Assistant, "both shipped"),  // 6
    ];
    store
        .append(&id, append_of(messages))
        .await
        .expect("append");
    for n in 2..=4 {
        let window = store.get(&id, Window::LastN(n)).await.expect("get");
        assert_eq!(
            seqs(&window.messages),
            vec![2, 3, 4, 5, 6],
            "last {n} must grow back to the assistant message with tool_calls"
        );
        assert_eq!(window.messages[0].body.tool_calls.len(), 3);
    }
    let one = store.get(&id, Window::LastN(1)).await.expect("get");
    assert_eq!(seqs(&one.messages), vec![6]);
    let five = store.get(&id, Window::LastN(5)).await.expect("get");
    assert_eq!(seqs(&five.messages), vec![2, 3, 4, 5, 6]);
}

/// Regression: on a session of 400,000 tool results, `last_n = 1` walked back through all
/// of them (1.96 s inside one Redis script). A window grows back at most
/// `MAX_WINDOW_GROWTH` messages; results further from their call are left out.
pub async fn window_growth_is_bounded(store: TestStore) {
    use crate::domain::MAX_WINDOW_GROWTH;
    let id = unique_id("growth");
    let run = MAX_WINDOW_GROWTH + 40;
    let mut messages = vec![user("hi"), assistant_calling(&["call_a"])]; // 1, 2
    messages.extend((0..run).map(|_| tool_result("call_a"))); // 3 ..= run + 2
    // Written in pieces, as no backend takes 170 messages in one write everywhere.
    for piece in messages.chunks(50) {
        store
            .append(&id, append_of(piece.to_vec()))
            .await
            .expect("append");
    }
    let last = run as u64 + 2;
    let one = store.get(&id, Window::LastN(1)).await.expect("get");
    assert!(
        one.messages.is_empty(),
        "results {} back from their call are left out: {:?}",
        run,
        seqs(&one.messages)
    );
    // A window whose start is within the bound still grows back to the call.
    let near = store
        .get(&id, Window::LastN(run as u32 - 20))
        .await
        .expect("get");
    assert_eq!(seqs(&near.messages), (2..=last).collect::<Vec<_>>());
    let all = store.get(&id, Window::All).await.expect("get");
    assert_eq!(all.messages.len() as u64, last);
}

/// Regression: restore, migrate, import and rotate-keys rewrote every message's time to
/// "now". A message that carries its time (a copy) keeps it, to the millisecond; one
/// without gets the store's clock.
pub async fn copies_keep_their_message_times(store: TestStore) {
    let id = unique_id("times");
    let ms = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap().as_millis();
    let then = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let copied = |content: &str| NewMessage {
        create_time: Some(then),
        ..user(content)
    };
    let before = SystemTime::now() - Duration::from_secs(1);
    store
        .replace(
            &id,
            vec![copied("old"), user("new")],
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("replace");
    store
        .set_system_messages(&id, vec![copied("be kind")], WriteOptions::ttl(TTL))
        .await
        .expect("system messages");
    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(ms(session.messages[0].create_time), ms(then));
    assert!(
        session.messages[1].create_time >= before,
        "a new message gets now"
    );
    assert_eq!(ms(session.system_messages[0].create_time), ms(then));
}

/// Replace swaps all messages and restarts seqs at 1; later appends continue from there.
pub async fn replace_renumbers_messages(store: TestStore) {
    let id = unique_id("replace");
    store
        .append(
            &id,
            append_of((0..5).map(|n| user(&format!("old{n}"))).collect()),
        )
        .await
        .expect("append");
    let replaced = store
        .replace(
            &id,
            vec![user("new1"), user("new2")],
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("replace");
    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(contents(&session.messages), vec!["new1", "new2"]);
    assert_eq!(seqs(&session.messages), vec![1, 2]);
    assert_eq!(session.version, replaced.version);
    let next = store
        .append(&id, append_of(vec![user("new3")]))
        .await
        .expect("append");
    assert_eq!(next.first_seq, 3);

    // Replace creates an absent session and accepts an empty list.
    let created = unique_id("replace-new");
    store
        .replace(&created, vec![], WriteOptions::ttl(TTL))
        .await
        .expect("replace on absent");
    let empty = store.get(&created, Window::All).await.expect("get");
    assert!(empty.messages.is_empty());
    assert_eq!(empty.message_count, 0);
}

/// System messages are stored apart from the conversation and replaced as a whole.
pub async fn system_messages_are_kept_apart(store: TestStore) {
    let id = unique_id("system");
    store
        .set_system_messages(
            &id,
            vec![
                NewMessage::text(Role::System, "You are a helpful agent."),
                NewMessage::text(Role::Developer, "Answer in English."),
            ],
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("set system");
    store
        .append(&id, append_of(vec![user("hi")]))
        .await
        .expect("append");
    let session = store.get(&id, Window::LastN(1)).await.expect("get");
    assert_eq!(contents(&session.messages), vec!["hi"]);
    assert_eq!(
        seqs(&session.messages),
        vec![1],
        "system messages take no conversation seq"
    );
    assert_eq!(
        contents(&session.system_messages),
        vec!["You are a helpful agent.", "Answer in English."]
    );
    assert_eq!(session.system_messages[1].body.role, Role::Developer);

    store
        .set_system_messages(&id, vec![], WriteOptions::ttl(TTL))
        .await
        .expect("clear system");
    let cleared = store.get(&id, Window::All).await.expect("get");
    assert!(cleared.system_messages.is_empty());
    assert_eq!(contents(&cleared.messages), vec!["hi"]);
}

/// State replace swaps the object; merge overwrites top-level keys and removes nulls.
pub async fn state_replace_and_merge(store: TestStore) {
    let id = unique_id("state");
    let replaced = store
        .update_state(
            &id,
            StateUpdate::Replace(object(
                json!({"step": "greeting", "cart": {"items": [1, 2]}, "vip": true}),
            )),
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("replace state");
    assert_eq!(replaced.state["step"], json!("greeting"));

    let merged = store
        .update_state(
            &id,
            StateUpdate::Merge(object(
                json!({"step": "checkout", "vip": null, "lang": "id"}),
            )),
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("merge state");
    let expected = object(json!({"step": "checkout", "cart": {"items": [1, 2]}, "lang": "id"}));
    assert_eq!(merged.state, expected);
    assert!(merged.write.version > replaced.write.version);
    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(session.state, expected);

    store
        .update_state(
            &id,
            StateUpdate::Replace(object(json!({"only": 1}))),
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("replace again");
    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(session.state, object(json!({"only": 1})));
}

/// Delete removes everything of the session; deleting again reports false.
pub async fn delete_removes_session(store: TestStore) {
    let id = unique_id("delete");
    store
        .append(&id, append_of(vec![user("bye")]))
        .await
        .expect("append");
    store
        .update_state(
            &id,
            StateUpdate::Replace(object(json!({"a": 1}))),
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("state");
    assert!(store.delete(&id, None).await.expect("delete"));
    must_be_absent(&store, &id).await;
    assert!(!store.delete(&id, None).await.expect("second delete"));
    // A new session under the same id starts from scratch.
    let again = store
        .append(&id, append_of(vec![user("hello again")]))
        .await
        .expect("append");
    assert_eq!(again.first_seq, 1);
    let session = store.get(&id, Window::All).await.expect("get");
    assert!(session.state.is_empty(), "state survived a delete");
}

/// Every field of a message comes back as it was written.
pub async fn every_message_field_round_trips(store: TestStore) {
    let id = unique_id("fields");
    let mut assistant = assistant_calling(&["call_1"]);
    assistant.content = "Let me check.".into();
    assistant.model = Some("deepseek-chat".into());
    assistant.usage = Some(Usage {
        prompt_tokens: 120,
        completion_tokens: 30,
        total_tokens: 150,
        cached_tokens: 64,
        reasoning_tokens: 12,
        cache_miss_tokens: 56,
    });
    assistant.reasoning_content = Some("The user wants order status.".into());
    assistant.metadata =
        object(json!({"latency_ms": 812, "tags": ["a", "b"], "nested": {"ok": true}}));
    let mut named = user("hello");
    named.name = Some("Budi".into());
    let written = vec![named, assistant, tool_result("call_1")];
    store
        .append(&id, append_of(written.clone()))
        .await
        .expect("append");
    let session = store.get(&id, Window::All).await.expect("get");
    let bodies: Vec<NewMessage> = session.messages.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, written);
}

/// Unicode of every kind and large contents are stored byte for byte.
pub async fn unicode_and_large_contents_round_trip(store: TestStore) {
    let id = unique_id("unicode");
    let texts = [
        "Halo, apa kabar? 👋🏽".to_string(),
        "订单已发货。ありがとう。안녕하세요".to_string(),
        "RTL: مرحبا بك — and a zero-width joiner: 👩\u{200d}💻".to_string(),
        "quotes \" ' \\ and newlines\n\ttabs".to_string(),
        "é".repeat(200_000),
        "long ".repeat(100_000),
    ];
    store
        .append(&id, append_of(texts.iter().map(|t| user(t)).collect()))
        .await
        .expect("append");
    let unicode_id = SessionId::new(format!("{}-ünïcødé-会话", id.as_str()));
    store
        .update_state(
            &unicode_id,
            StateUpdate::Replace(object(json!({"名前": "テスト"}))),
            WriteOptions::ttl(TTL),
        )
        .await
        .expect("unicode id");
    let session = store.get(&id, Window::All).await.expect("get");
    assert_eq!(contents(&session.messages), texts.to_vec());
    let unicode = store
        .get(&unicode_id, Window::All)
        .await
        .expect("get unicode id");
    assert_eq!(unicode.state["名前"], json!("テスト"));
}

/// Every backend keeps a session's usage total beside its messages: appends add their
/// messages' usage (a repeated request_id adds nothing), whatever window is read the total
/// is the session's, listings and stats carry it, a replace sets it, a new incarnation
/// starts from zero; counted in 64 bits.
pub async fn usage_totals_follow_writes(store: TestStore) {
    let id = unique_id("usage");
    let answer = |prompt_tokens: u32| {
        let mut message = NewMessage::text(Role::Assistant, "Your parcel is on its way.");
        message.usage = Some(Usage {
            prompt_tokens,
            completion_tokens: 20,
            total_tokens: prompt_tokens.saturating_add(20),
            cached_tokens: 7,
            reasoning_tokens: 3,
            cache_miss_tokens: 1,
        });
        message
    };
    let total = |messages: &[NewMessage]| UsageTotal::of(messages);
    let big = answer(4_000_000_000);
    let mut first = append_of(vec![user("Where is my parcel?"), big.clone()]);
    first.request_id = Some("turn-1".into());
    store.append(&id, first.clone()).await.expect("append");
    store.append(&id, first).await.expect("a repeated append");
    let read = store.get(&id, Window::All).await.expect("get");
    assert_eq!(read.usage_total, total(std::slice::from_ref(&big)));

    let second = vec![
        user("And the other one?"),
        answer(4_000_000_000),
        answer(10),
    ];
    store
        .append(&id, append_of(second.clone()))
        .await
        .expect("append");
    let expected = total(&[big.clone(), second[1].clone(), second[2].clone()]);
    assert_eq!(expected.prompt_tokens, 8_000_000_010, "past u32");
    let last = store.get(&id, Window::LastN(1)).await.expect("get");
    assert_eq!(last.messages.len(), 1);
    assert_eq!(
        last.usage_total, expected,
        "the session's, not the window's"
    );
    let system = vec![NewMessage::text(Role::System, "Be brief.")];
    let written = store
        .set_system_messages(&id, system, WriteOptions::ttl(TTL))
        .await
        .expect("system messages");
    assert!(written.version > 0);
    assert_eq!(
        store.get(&id, Window::HEADER).await.unwrap().usage_total,
        expected
    );

    let listed = store
        .list(ListQuery {
            prefix: id.as_str().to_string(),
            page_size: 10,
            page_token: None,
        })
        .await
        .expect("list");
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].usage_total, expected);
    let stats = store.stats().await.expect("stats");
    for (whole, ours) in stats.usage_total.counters().iter().zip(expected.counters()) {
        assert!(*whole >= ours, "{:?} holds {expected:?}", stats.usage_total);
    }

    let replaced = vec![user("Start over"), answer(50)];
    store
        .replace(&id, replaced.clone(), WriteOptions::ttl(TTL))
        .await
        .expect("replace");
    let read = store.get(&id, Window::All).await.expect("get");
    assert_eq!(read.usage_total, total(&replaced));

    store.delete(&id, None).await.expect("delete");
    store
        .append(&id, append_of(vec![user("Hello again")]))
        .await
        .expect("append");
    let read = store.get(&id, Window::All).await.expect("get");
    assert_eq!(read.usage_total, UsageTotal::default());
}
