//! The published JSON Schema (events/schema/event.v9.schema.json) accepts every event the
//! ledger emits, of every type and every failure reason, and refuses drift.

mod common;

use bindledger::adapters::provider::{MaintenanceWindow, Scenario, SimulatedGateway, WalletStatus};
use bindledger::domain::command::{
    BindRequest, CommonInput, FactorInput, LockCommand, Meta, PayRequest, UnbindRequest, UnlockCommand,
};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::Ledger;
use bindledger_events::*;
use chrono::Utc;
use common::*;
use std::collections::BTreeSet;
use std::sync::Arc;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/schema/event.v9.schema.json"
    ))
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("the schema compiles")
}

fn check(v: &jsonschema::Validator, bytes: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let errors: Vec<String> = v
        .iter_errors(&value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{}\n{}",
        String::from_utf8_lossy(bytes),
        errors.join("\n")
    );
}

async fn bind(
    l: &Ledger,
    g: &SimulatedGateway,
    account: &str,
    provider: &str,
    phone: &str,
    password: Option<&str>,
    factor: Option<(Factor, String)>,
) -> Event {
    let p = Provider::parse(provider).unwrap();
    let req = BindRequest {
        provider: provider.into(),
        wallet_account: SecretString::new(phone.into()),
        payment_password: SecretString::new(password.map(str::to_owned).unwrap_or_else(|| g.password_for(&p, phone))),
        factor: factor.map(|(f, code)| FactorInput {
            kind: f.as_str().into(),
            code: SecretString::new(code),
        }),
        common: CommonInput::default(),
    };
    l.bind(req.validate(account, Utc::now()).unwrap())
        .await
        .unwrap()
        .event
        .as_ref()
        .clone()
}

#[tokio::test]
async fn every_event_the_ledger_emits_matches_the_published_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let now = Utc::now();
    config.max_bindings_per_account = 2;
    config.gateway.simulated = Scenario {
        frozen_per_mille: 100,
        closed_per_mille: 100,
        unknown_per_mille: 100,
        balance_minor_min: 1000,
        balance_minor_max: 1000,
        maintenance: vec![MaintenanceWindow {
            provider: "apple_pay".into(),
            from: now - chrono::Duration::hours(1),
            until: now + chrono::Duration::hours(1),
        }],
        ..Scenario::quiet(3)
    };
    let g = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let l = Ledger::open(&config, LedgerSecret::from_bytes([5; 32]), g.clone()).unwrap();
    let alipay = Provider::parse("alipay").unwrap();
    let find = |status: WalletStatus| {
        (0..10_000)
            .map(phone)
            .find(|p| g.wallet_status(&alipay, p) == status)
            .unwrap()
    };
    let (ok1, ok2, ok3) = {
        let mut active = (0..10_000)
            .map(phone)
            .filter(|p| g.wallet_status(&alipay, p) == WalletStatus::Active);
        (active.next().unwrap(), active.next().unwrap(), active.next().unwrap())
    };
    let sms = g.factor_code_for(&alipay, &ok1, Factor::Sms);
    let bound = bind(&l, &g, "a", "alipay", &ok1, None, Some((Factor::Sms, sms))).await;
    let Payload::WalletBound { binding_id, .. } = bound.payload else {
        panic!("{:?}", bound.payload)
    };
    bind(&l, &g, "a", "alipay", &ok1, None, None).await; // already bound
    bind(&l, &g, "a", "alipay", &find(WalletStatus::Frozen), None, None).await;
    bind(&l, &g, "a", "alipay", &find(WalletStatus::Closed), None, None).await;
    bind(&l, &g, "a", "alipay", &find(WalletStatus::Unknown), None, None).await;
    bind(&l, &g, "a", "alipay", &ok2, Some("nope"), None).await;
    bind(
        &l,
        &g,
        "a",
        "alipay",
        &ok2,
        None,
        Some((Factor::Face, "bio_wrong".into())),
    )
    .await;
    bind(&l, &g, "a", "apple_pay", &ok2, None, None).await; // maintenance
    bind(&l, &g, "a", "other:paypay", &ok2, None, None).await;
    bind(&l, &g, "a", "alipay", &ok3, None, None).await; // limit of 2 reached
    let pay = |amount: i64, password: Option<&str>, binding: uuid::Uuid, currency: &str| PayRequest {
        binding_id: binding.to_string(),
        order_id: format!("o-{amount}"),
        amount_minor: amount,
        currency: Some(currency.into()),
        payment_password: SecretString::new(
            password
                .map(str::to_owned)
                .unwrap_or_else(|| g.password_for(&alipay, &ok1)),
        ),
        factor: None,
        common: CommonInput {
            idempotency_key: Some(format!("k-{amount}")),
            correlation_id: Some("checkout-1".into()),
            ..Default::default()
        },
    };
    for req in [
        pay(500, None, binding_id, "CNY"),
        pay(501, Some("bad"), binding_id, "USD"),
        pay(999_999, None, binding_id, "CNY"),
        pay(7, None, uuid::Uuid::now_v7(), "JPY"),
    ] {
        l.pay(req.validate("a", Utc::now()).unwrap()).await.unwrap();
    }
    // Locks: a lock, a refused lock, a payment refused while locked, an unlock, a refused unlock.
    let meta = |key: &str| Meta {
        account: "a".into(),
        idempotency_key: Some(key.into()),
        expected_version: None,
        correlation_id: Some("password_brute_force-9".into()),
        event_time: None,
        keys_checked: None,
        context: Context {
            channel: "monitor".into(),
            ..Default::default()
        },
    };
    let until = types::micros::truncate(Utc::now() + chrono::Duration::minutes(30));
    for b in [binding_id, uuid::Uuid::now_v7()] {
        l.lock(LockCommand {
            meta: meta(&format!("lock-{b}")),
            binding_id: b,
            alert_id: "password_brute_force-9".into(),
            until,
        })
        .await
        .unwrap();
    }
    l.pay(pay(502, None, binding_id, "CNY").validate("a", Utc::now()).unwrap())
        .await
        .unwrap();
    for key in ["unlock-1", "unlock-2"] {
        l.unlock(UnlockCommand {
            meta: meta(key),
            binding_id,
            cause: UnlockCause::Manual,
            alert_id: None,
        })
        .await
        .unwrap();
    }
    for id in [binding_id, binding_id] {
        l.unbind(
            UnbindRequest {
                confirm: true,
                common: CommonInput::default(),
            }
            .validate("a", &id.to_string(), Utc::now())
            .unwrap(),
        )
        .await
        .unwrap();
    }

    l.triage(bindledger::domain::command::TriageCommand {
        meta: meta("triage-1"),
        alert_id: "password_brute_force-7".into(),
        action: bindledger_events::TriageAction::Assigned,
        operator: "alice".into(),
        assignee: Some("bob".into()),
        note: "called the holder".into(),
    })
    .await
    .unwrap();
    // An erasure (v8): `subject_erased`, and every sealed field before it, as stored.
    l.erase("a", "dpo").await.unwrap();

    let v = schema();
    let mut seen = BTreeSet::new();
    for r in l.raw_events(1) {
        let (_, bytes) = r.unwrap();
        check(&v, &bytes);
        let e = decode(&bytes).unwrap();
        seen.insert(e.event_type().to_owned());
        if let Some(code) = e.payload.failure_code() {
            seen.insert(code.to_owned());
        }
    }
    for t in EVENT_TYPES {
        assert!(seen.contains(*t), "the workload emitted no {t}");
    }
    l.close();

    // Every failure variant, including those the workload above cannot reach, as encoded.
    let bind_reasons = [
        BindFailure::WalletFrozen,
        BindFailure::WalletClosed,
        BindFailure::InvalidInput {
            field: "payment_password".into(),
        },
        BindFailure::Network,
        BindFailure::Maintenance { side: Side::Platform },
        BindFailure::AlreadyBound { binding_id },
        BindFailure::VerificationFactorFailed {
            factor: Factor::Fingerprint,
        },
        BindFailure::BindingLimitReached { limit: 10 },
    ];
    let pay_reasons = [
        PaymentFailure::WrongPassword,
        PaymentFailure::BindingNotActive,
        PaymentFailure::WalletFrozen,
        PaymentFailure::WalletClosed,
        PaymentFailure::InsufficientFunds,
        PaymentFailure::VerificationFactorFailed { factor: Factor::Sms },
        PaymentFailure::Network,
        PaymentFailure::Maintenance { side: Side::Provider },
        PaymentFailure::BindingLocked {
            alert_id: "password_brute_force-9".into(),
            until: types::micros::truncate(Utc::now()),
        },
        PaymentFailure::TooManyAttempts {
            until: types::micros::truncate(Utc::now()),
        },
        PaymentFailure::OrderAlreadyPaid { payment_seq: 7 },
    ];
    let wallet = WalletRef {
        masked: "138****5678".into(),
        fingerprint: Hash([1; 32]),
    };
    let mut payloads: Vec<Payload> = bind_reasons
        .into_iter()
        .map(|reason| Payload::BindFailed {
            provider: alipay.clone(),
            wallet: wallet.clone(),
            factors: vec![],
            reason,
        })
        .collect();
    payloads.extend(pay_reasons.into_iter().map(|reason| Payload::PaymentFailed {
        binding_id,
        order_id: "o".into(),
        amount_minor: 1,
        currency: Currency::CNY,
        factors: vec![],
        reason,
    }));
    payloads.extend(
        [
            UnbindFailure::NotBound,
            UnbindFailure::Maintenance { side: Side::Platform },
        ]
        .into_iter()
        .map(|reason| Payload::UnbindFailed { binding_id, reason }),
    );
    payloads.push(Payload::BindingLockFailed {
        binding_id,
        alert_id: "x-1".into(),
        reason: LockFailure::NotBound,
    });
    payloads.push(Payload::BindingUnlockFailed {
        binding_id,
        reason: LockFailure::NotLocked,
    });
    let mut codes = BTreeSet::new();
    for payload in payloads {
        codes.insert(payload.failure_code().unwrap());
        let e = Event {
            v: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            seq: 1,
            account: "a".into(),
            account_seq: 1,
            event_time: types::micros::truncate(Utc::now()),
            record_time: types::micros::truncate(Utc::now()),
            idempotency_key: None,
            request_digest: None,
            correlation_id: None,
            context: Context {
                channel: "web".into(),
                device_id: Some("d".into()),
                ip: Some("::1".into()),
                user_agent: Some("ua".into()),
                device_fp: Some(Hash([0xd1; 32])),
                ip_fp: Some(Hash([0x1f; 32])),
            },
            prev_hash: GENESIS_HASH,
            payload,
        };
        check(&v, &encode(&e));
    }
    assert_eq!(
        codes.into_iter().collect::<Vec<_>>(),
        {
            let mut c = FAILURE_CODES.to_vec();
            c.sort();
            c
        },
        "every failure code is covered"
    );

    // Drift is refused: an unknown field, a float amount.
    let mut value: serde_json::Value = serde_json::from_slice(&l_sample()).unwrap();
    assert!(v.is_valid(&value));
    value["payload"]["tip"] = serde_json::json!(1);
    assert!(!v.is_valid(&value), "unknown fields are drift");
    let mut value: serde_json::Value = serde_json::from_slice(&l_sample()).unwrap();
    value["payload"]["amount_minor"] = serde_json::json!(1.5);
    assert!(!v.is_valid(&value), "amounts are integers");
}

fn l_sample() -> Vec<u8> {
    encode(&Event {
        v: SCHEMA_VERSION,
        id: uuid::Uuid::nil(),
        seq: 1,
        account: "a".into(),
        account_seq: 1,
        event_time: types::micros::truncate(Utc::now()),
        record_time: types::micros::truncate(Utc::now()),
        idempotency_key: None,
        request_digest: None,
        correlation_id: None,
        context: Context {
            channel: "app".into(),
            ..Default::default()
        },
        prev_hash: GENESIS_HASH,
        payload: Payload::PaymentFailed {
            binding_id: uuid::Uuid::nil(),
            order_id: "o".into(),
            amount_minor: 5,
            currency: Currency::CNY,
            factors: vec![],
            reason: PaymentFailure::Network,
        },
    })
}
