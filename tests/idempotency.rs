//! Idempotency keys are remembered for a window in time, on disk, across restarts, SIGKILL and
//! rebuilds; and no order is paid twice, however many payments of it race.

mod common;

use bindledger::adapters::provider::SimulatedGateway;
use bindledger::domain::command::{CommonInput, PayRequest};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::ledger::idempotency::IndexKind;
use bindledger::{Config, Ledger};
use bindledger_events::{decode, Payload, PaymentFailure};
use chrono::Utc;
use common::*;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

const SECRET: [u8; 32] = [42; 32];

/// A bound on the indexer's writing the keys, well past its 200 ms (quiet) and 2 s (busy).
const WRITTEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

fn open(config: &Config) -> (Ledger, Arc<SimulatedGateway>) {
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    (
        Ledger::open(config, LedgerSecret::from_bytes(SECRET), gateway.clone()).unwrap(),
        gateway,
    )
}

fn pay(g: &SimulatedGateway, n: u64, binding: Uuid, order: &str, key: Option<&str>) -> PayRequest {
    PayRequest {
        binding_id: binding.to_string(),
        order_id: order.into(),
        amount_minor: 1,
        currency: None,
        payment_password: SecretString::new(g.password_for(&alipay(), &phone(n))),
        factor: None,
        common: CommonInput {
            idempotency_key: key.map(str::to_owned),
            ..Default::default()
        },
    }
}

/// Binds a wallet to each of `accounts` accounts; returns their bindings.
async fn bindings(l: &Ledger, g: &SimulatedGateway, accounts: u64) -> Vec<Uuid> {
    let mut out = Vec::new();
    for a in 0..accounts {
        out.push(bind_wallet(l, g, &format!("acct-{a}"), a).await);
    }
    out
}

/// `n` keyed payments spread over the accounts, each of its own order.
async fn keyed_payments(l: &Ledger, g: &Arc<SimulatedGateway>, bindings: &[Uuid], tag: &str, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (l, g, bindings, tag) = (l.clone(), g.clone(), bindings.to_vec(), tag.to_owned());
        tasks.spawn(async move {
            for i in (c..n).step_by(8) {
                let a = (i % bindings.len()) as u64;
                let key = format!("{tag}-{i}");
                l.pay(
                    pay(&g, a, bindings[a as usize], &key, Some(&key))
                        .validate(&format!("acct-{a}"), Utc::now())
                        .unwrap(),
                )
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_outlives_the_former_event_window_a_restart_and_a_rebuild_of_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (l, g) = open(&config);
    let bs = bindings(&l, &g, 4).await;
    let first = l
        .pay(
            pay(&g, 0, bs[0], "order-1", Some("k-first"))
                .validate("acct-0", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    // Far more keyed events than the former in-memory index kept with `memory_keys = 1000`.
    keyed_payments(&l, &g, &bs, "fill", 6_000).await;
    let retry = |l: Ledger, g: Arc<SimulatedGateway>, bs: Vec<Uuid>| async move {
        l.pay(
            pay(&g, 0, bs[0], "order-1", Some("k-first"))
                .validate("acct-0", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap()
    };
    let again = retry(l.clone(), g.clone(), bs.clone()).await;
    assert!(again.replayed);
    assert_eq!((again.event.seq, again.hash), (first.event.seq, first.hash));
    // The keys are on disk, not in memory: once the indexer says it wrote them, memory holds
    // only what it has not written yet.
    assert!(
        l.wait_keys_written(l.log_len(), WRITTEN_WITHIN).await,
        "the indexer wrote the keys"
    );
    let (in_memory, on_disk, _) = l.key_index_stats();
    assert!(on_disk >= 6_000, "live entries on disk: {on_disk}");
    assert!(in_memory < 1_000, "entries in memory: {in_memory}");
    l.close();

    // A restart: the same answer.
    let (l, g) = open(&config);
    let again = retry(l.clone(), g.clone(), bs.clone()).await;
    assert!(again.replayed && again.event.seq == first.event.seq);
    l.close();

    // The table deleted: it is rebuilt from the log, with the same keys.
    std::fs::remove_file(dir.path().join("idempotency.keys")).unwrap();
    std::fs::remove_file(dir.path().join("orders.keys")).unwrap();
    let (l, g) = open(&config);
    let again = retry(l.clone(), g.clone(), bs.clone()).await;
    assert!(again.replayed && again.event.seq == first.event.seq);
    let (_, on_disk, _) = l.key_index_stats();
    assert!(on_disk >= 6_000, "rebuilt from the log: {on_disk}");
    // A damaged table is rebuilt too.
    l.close();
    let path = dir.path().join("idempotency.keys");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at..at + 64].fill(0xee);
    std::fs::write(&path, bytes).unwrap();
    let (l, g) = open(&config);
    let again = retry(l.clone(), g.clone(), bs.clone()).await;
    assert!(again.replayed && again.event.seq == first.event.seq);
    l.close();

    // The former behaviour, for contrast: an index of the last 1,000 events has forgotten it,
    // and only the paid-order check stops a second charge.
    let mut memory = config.clone();
    memory.idempotency.index = IndexKind::Memory;
    memory.idempotency.memory_keys = 1_000;
    let (l, g) = open(&memory);
    let again = retry(l.clone(), g.clone(), bs.clone()).await;
    assert!(!again.replayed, "the memory index forgot the key");
    l.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_leave_after_the_window_and_their_entries_leave_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.idempotency.window = "2s".into();
    // The window is in the ledger's time: a manual clock crosses it.
    let clock = Arc::new(bindledger::ledger::clock::ManualClock::new(Utc::now()));
    let (l, g) = open_with_clock(&config, SECRET, clock.clone());
    let bs = bindings(&l, &g, 4).await;
    keyed_payments(&l, &g, &bs, "old", 4_000).await;
    assert!(l.wait_keys_written(l.log_len(), WRITTEN_WITHIN).await);
    let (_, before, _) = l.key_index_stats();
    assert!(before >= 4_000, "{before}");
    let first = l
        .pay(
            pay(&g, 1, bs[1], "order-x", Some("k-x"))
                .validate("acct-1", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    clock.advance(chrono::Duration::milliseconds(2_100));
    // After the window: the same key is a new command.
    let later = l
        .pay(
            pay(&g, 1, bs[1], "order-y", Some("k-x"))
                .validate("acct-1", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(!later.replayed && later.event.seq > first.event.seq);
    assert!(matches!(later.event.payload, Payload::PaymentSucceeded { .. }));
    // New keys make the indexer rewrite buckets, dropping the entries that left the window.
    keyed_payments(&l, &g, &bs, "new", 4_000).await;
    assert!(l.wait_keys_written(l.log_len(), WRITTEN_WITHIN).await);
    let (_, after, _) = l.key_index_stats();
    // Live: the new keys and the paid orders (which never expire) of all payments; of the
    // 4,000 old keys, those in buckets not rewritten since may remain.
    let orders = 4_000 + 4_000 + 2;
    assert!(
        after < (orders + 4_000 + 1) as u64 + 2_000,
        "entries that left the window are dropped: {before} -> {after}"
    );
    l.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_paid_once_whatever_the_keys_and_the_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (l, g) = open(&config);
    let bs = bindings(&l, &g, 2).await;
    let first = l
        .pay(
            pay(&g, 0, bs[0], "order-7", None)
                .validate("acct-0", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(first.event.payload, Payload::PaymentSucceeded { .. }));
    // Without a key, and with a new key: refused, naming the first payment.
    for key in [None, Some("another-key")] {
        let second = l
            .pay(
                pay(&g, 0, bs[0], "order-7", key)
                    .validate("acct-0", Utc::now())
                    .unwrap(),
            )
            .await
            .unwrap();
        match &second.event.payload {
            Payload::PaymentFailed {
                reason: PaymentFailure::OrderAlreadyPaid { payment_seq },
                ..
            } => assert_eq!(*payment_seq, first.event.seq),
            other => panic!("{other:?}"),
        }
    }
    // The same order id on another account is another order.
    let other = l
        .pay(
            pay(&g, 1, bs[1], "order-7", None)
                .validate("acct-1", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(other.event.payload, Payload::PaymentSucceeded { .. }));

    // 50 racers on one new order, each with its own key: one success, and the provider is
    // asked once.
    let calls_before = g.payment_calls();
    let spent_before = g.spent_minor(&alipay(), &phone(0));
    let mut racers = tokio::task::JoinSet::new();
    for r in 0..50 {
        let (l, g, b) = (l.clone(), g.clone(), bs[0]);
        racers.spawn(async move {
            let key = format!("racer-{r}");
            l.pay(
                pay(&g, 0, b, "order-race", Some(&key))
                    .validate("acct-0", Utc::now())
                    .unwrap(),
            )
            .await
            .unwrap()
        });
    }
    let mut succeeded = Vec::new();
    let mut refused = 0;
    while let Some(r) = racers.join_next().await {
        let c = r.unwrap();
        match &c.event.payload {
            Payload::PaymentSucceeded { .. } => succeeded.push(c.event.seq),
            Payload::PaymentFailed {
                reason: PaymentFailure::OrderAlreadyPaid { payment_seq },
                ..
            } => {
                refused += 1;
                assert!(*payment_seq > first.event.seq);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((succeeded.len(), refused), (1, 49));
    assert_eq!(g.payment_calls() - calls_before, 1, "the provider was asked once");
    assert_eq!(g.spent_minor(&alipay(), &phone(0)) - spent_before, 1);
    l.close();

    // After a restart, and with the table rebuilt, the order is still paid.
    std::fs::remove_file(dir.path().join("orders.keys")).unwrap();
    let (l, g) = open(&config);
    let again = l
        .pay(
            pay(&g, 0, bs[0], "order-race", Some("late"))
                .validate("acct-0", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        matches!(again.event.payload, Payload::PaymentFailed { reason: PaymentFailure::OrderAlreadyPaid { payment_seq }, .. } if payment_seq == succeeded[0])
    );
    l.close();
}

/// The real binary over HTTP, killed with SIGKILL: keys written to the table and keys only in
/// the log's tail are both remembered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_sigkill_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let config = dir.path().join("bindledger.toml");
    std::fs::write(&config, "[gateway.simulated]\nseed = 11\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\nnetwork_error_per_mille = 0\n").unwrap();
    let env = [("BINDLEDGER_CONFIG", config.to_str().unwrap())];
    let gateway = SimulatedGateway::new(bindledger::adapters::provider::Scenario::quiet(11));
    let server = spawn_server(&data, &log, &env);
    let mut client = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
    let (status, v) = client
        .post_json(
            "/v1/accounts/acct-1/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": gateway.password_for(&alipay(), &phone(1))}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    let binding = v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    let pw = gateway.password_for(&alipay(), &phone(1));
    let body = |i: usize| json!({"binding_id": binding, "order_id": format!("o-{i}"), "amount_minor": 1, "payment_password": pw, "idempotency_key": format!("k-{i}")});
    let mut acked = Vec::new();
    for i in 0..600 {
        let (status, v) = client
            .post_json("/v1/accounts/acct-1/payments", &body(i))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
        acked.push(v["event"]["seq"].as_u64().unwrap());
        if i == 300 {
            // The first half in the table: the server's metrics say when memory holds no key.
            let deadline = std::time::Instant::now() + WRITTEN_WITHIN;
            loop {
                let (_, body) = client.send(hyper::Method::GET, "/metrics", None).await.unwrap();
                let text = String::from_utf8_lossy(&body).into_owned();
                if metric(&text, "bindledger_idempotency_entries{held=\"memory\"}") == Some(0.0) {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the indexer never wrote the keys");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    server.kill();
    let server = spawn_server(&data, &log, &env);
    let mut client = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
    for i in [0, 150, 300, 450, 599] {
        let (status, v) = client
            .post_json("/v1/accounts/acct-1/payments", &body(i))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200, "a replay answers 200: {v}");
        assert_eq!(v["event"]["seq"].as_u64().unwrap(), acked[i], "key k-{i}");
    }
    // The log holds each payment once.
    drop(client);
    server.terminate();
    let scan = bindledger::ledger::store::scan_dir(&data, 1).unwrap();
    let mut payments = 0;
    for r in scan {
        let (_, bytes) = r.unwrap();
        if matches!(decode(&bytes).unwrap().payload, Payload::PaymentSucceeded { .. }) {
            payments += 1;
        }
    }
    assert_eq!(payments, 600);
}

/// Millions of live keys stay on disk: resident memory does not grow with them (the tables are
/// read and written through the page cache, which is the kernel's, not the process's).
#[test]
fn millions_of_keys_live_on_disk_not_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let table = bindledger::ledger::keytable::KeyTable::open(&dir.path().join("t.keys")).unwrap();
    let fp = |i: u64| {
        // splitmix64: well-spread fingerprints without hashing costs in a debug build.
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    const KEYS: u64 = 3_000_000;
    const BATCH: u64 = 131_072;
    let mut batch = Vec::with_capacity(BATCH as usize);
    let before = bindledger_fixture::resident_bytes();
    let mut first = 1;
    while first <= KEYS {
        let last = (first + BATCH - 1).min(KEYS);
        batch.clear();
        batch.extend((first..=last).map(|i| (fp(i), i)));
        table.insert(&mut batch, 0, last, last == KEYS).unwrap();
        first = last + 1;
    }
    let grown = bindledger_fixture::resident_bytes().saturating_sub(before);
    assert_eq!(table.live(), KEYS);
    assert!(table.file_bytes() >= KEYS * 16, "{}", table.file_bytes());
    assert!(
        grown < 48 << 20,
        "resident memory grew by {} MiB for {KEYS} keys",
        grown >> 20
    );
    for i in [1, 1_234_567, KEYS] {
        assert_eq!(table.lookup(fp(i)).unwrap(), vec![i]);
    }
    assert!(table.lookup(fp(KEYS + 1)).unwrap().is_empty());
}
