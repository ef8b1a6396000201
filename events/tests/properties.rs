//! Property tests of the event codec (issue 18): for arbitrary events of every type, encoding
//! then decoding gives the event back; the canonical writer writes exactly serde_json's bytes;
//! and the fast reader agrees with the general decoder on arbitrary and mutated bytes (both
//! read the same event, or both refuse), never panicking.

use bindledger_events::*;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use uuid::Uuid;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_:.-]{0,16}",
        // Anything: escapes, control characters, quotes, non-ASCII.
        "\\PC{0,12}",
        proptest::collection::vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect()),
    ]
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (946_684_800_000_000i64..4_102_444_800_000_000i64).prop_map(|us| DateTime::from_timestamp_micros(us).unwrap())
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn wallet() -> impl Strategy<Value = WalletRef> {
    (text(), hash()).prop_map(|(masked, fingerprint)| WalletRef { masked, fingerprint })
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just("alipay"),
        Just("wechat_pay"),
        Just("apple_pay"),
        Just("union_pay"),
        Just("bank_card"),
        Just("credit_card"),
        Just("other:x-1")
    ]
    .prop_map(|p| Provider::parse(p).unwrap())
}

fn currency() -> impl Strategy<Value = Currency> {
    prop_oneof![Just("CNY"), Just("USD"), Just("JPY"), Just("BHD")].prop_map(|c| Currency::parse(c).unwrap())
}

fn factor() -> impl Strategy<Value = Factor> {
    prop_oneof![
        Just(Factor::Password),
        Just(Factor::Sms),
        Just(Factor::Fingerprint),
        Just(Factor::Face)
    ]
}

fn factors() -> impl Strategy<Value = Vec<FactorCheck>> {
    proptest::collection::vec(
        (factor(), any::<bool>()).prop_map(|(factor, passed)| FactorCheck { factor, passed }),
        0..3,
    )
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Provider), Just(Side::Platform)]
}

fn bind_failure() -> impl Strategy<Value = BindFailure> {
    prop_oneof![
        Just(BindFailure::WalletFrozen),
        Just(BindFailure::WalletClosed),
        text().prop_map(|field| BindFailure::InvalidInput { field }),
        Just(BindFailure::Network),
        side().prop_map(|side| BindFailure::Maintenance { side }),
        uuid().prop_map(|binding_id| BindFailure::AlreadyBound { binding_id }),
        factor().prop_map(|factor| BindFailure::VerificationFactorFailed { factor }),
        any::<u32>().prop_map(|limit| BindFailure::BindingLimitReached { limit }),
    ]
}

fn payment_failure() -> impl Strategy<Value = PaymentFailure> {
    prop_oneof![
        Just(PaymentFailure::WrongPassword),
        Just(PaymentFailure::BindingNotActive),
        Just(PaymentFailure::WalletFrozen),
        Just(PaymentFailure::WalletClosed),
        Just(PaymentFailure::InsufficientFunds),
        factor().prop_map(|factor| PaymentFailure::VerificationFactorFailed { factor }),
        Just(PaymentFailure::Network),
        side().prop_map(|side| PaymentFailure::Maintenance { side }),
        (text(), time()).prop_map(|(alert_id, until)| PaymentFailure::BindingLocked { alert_id, until }),
        time().prop_map(|until| PaymentFailure::TooManyAttempts { until }),
        any::<u64>().prop_map(|payment_seq| PaymentFailure::OrderAlreadyPaid { payment_seq }),
    ]
}

fn payload() -> BoxedStrategy<Payload> {
    prop_oneof![
        (uuid(), provider(), wallet(), factors(), text()).prop_map(
            |(binding_id, provider, wallet, factors, agreement_id)| Payload::WalletBound {
                binding_id,
                provider,
                wallet,
                factors,
                agreement_id
            }
        ),
        (provider(), wallet(), factors(), bind_failure()).prop_map(|(provider, wallet, factors, reason)| {
            Payload::BindFailed {
                provider,
                wallet,
                factors,
                reason,
            }
        }),
        (
            uuid(),
            provider(),
            wallet(),
            text(),
            any::<i64>(),
            currency(),
            factors(),
            text()
        )
            .prop_map(
                |(binding_id, provider, wallet, order_id, amount_minor, currency, factors, authorization_id)| {
                    Payload::PaymentSucceeded {
                        binding_id,
                        provider,
                        wallet,
                        order_id,
                        amount_minor,
                        currency,
                        factors,
                        authorization_id,
                    }
                }
            ),
        (uuid(), text(), any::<i64>(), currency(), factors(), payment_failure()).prop_map(
            |(binding_id, order_id, amount_minor, currency, factors, reason)| Payload::PaymentFailed {
                binding_id,
                order_id,
                amount_minor,
                currency,
                factors,
                reason
            }
        ),
        (uuid(), provider(), wallet()).prop_map(|(binding_id, provider, wallet)| Payload::WalletUnbound {
            binding_id,
            provider,
            wallet
        }),
        (
            uuid(),
            prop_oneof![
                Just(UnbindFailure::NotBound),
                side().prop_map(|side| UnbindFailure::Maintenance { side })
            ]
        )
            .prop_map(|(binding_id, reason)| Payload::UnbindFailed { binding_id, reason }),
        (uuid(), text(), time()).prop_map(|(binding_id, alert_id, until)| Payload::BindingLocked {
            binding_id,
            alert_id,
            until
        }),
        (
            uuid(),
            text(),
            prop_oneof![Just(LockFailure::NotBound), Just(LockFailure::NotLocked)]
        )
            .prop_map(|(binding_id, alert_id, reason)| Payload::BindingLockFailed {
                binding_id,
                alert_id,
                reason
            }),
        (
            uuid(),
            text(),
            prop_oneof![Just(UnlockCause::Manual), Just(UnlockCause::Expired)]
        )
            .prop_map(|(binding_id, alert_id, cause)| Payload::BindingUnlocked {
                binding_id,
                alert_id,
                cause
            }),
        (
            uuid(),
            prop_oneof![Just(LockFailure::NotBound), Just(LockFailure::NotLocked)]
        )
            .prop_map(|(binding_id, reason)| Payload::BindingUnlockFailed { binding_id, reason }),
        (
            text(),
            prop_oneof![
                Just(TriageAction::Acknowledged),
                Just(TriageAction::Assigned),
                Just(TriageAction::Resolved),
                Just(TriageAction::FalsePositive),
                Just(TriageAction::Locked),
                Just(TriageAction::Unlocked)
            ],
            text(),
            proptest::option::of(text()),
            text()
        )
            .prop_map(|(alert_id, action, operator, assignee, note)| Payload::AlertTriaged {
                alert_id,
                action,
                operator,
                assignee,
                note
            }),
    ]
    .boxed()
}

fn event() -> BoxedStrategy<Event> {
    (
        (uuid(), any::<u64>(), text(), any::<u64>(), time(), time()),
        (
            proptest::option::of(text()),
            proptest::option::of(hash()),
            proptest::option::of(text()),
        ),
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        ),
        (
            hash(),
            payload(),
            proptest::option::of(hash()),
            proptest::option::of(hash()),
        ),
    )
        .prop_map(
            |(
                (id, seq, account, account_seq, event_time, record_time),
                (idempotency_key, request_digest, correlation_id),
                (channel, device_id, ip, user_agent),
                (prev_hash, payload, device_fp, ip_fp),
            )| Event {
                v: SCHEMA_VERSION,
                id,
                seq,
                account,
                account_seq,
                event_time,
                record_time,
                idempotency_key,
                request_digest,
                correlation_id,
                context: Context {
                    channel,
                    device_id,
                    ip,
                    user_agent,
                    device_fp,
                    ip_fp,
                },
                prev_hash,
                payload,
            },
        )
        .boxed()
}

/// Runs `f` on a thread with a large stack: the strategies' values are deep in a debug build.
fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn runner() -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })
}

#[test]
fn encoding_round_trips_and_is_serde_json_byte_for_byte() {
    big_stack(|| {
        runner()
            .run(&event(), |e| {
                let bytes = encode(&e);
                prop_assert_eq!(
                    &bytes,
                    &serde_json::to_vec(&e).unwrap(),
                    "the canonical writer writes serde_json's bytes"
                );
                prop_assert_eq!(decode(&bytes).unwrap(), e);
                Ok(())
            })
            .unwrap()
    });
}

#[test]
fn the_fast_reader_and_the_general_decoder_agree_on_mutated_bytes() {
    big_stack(|| {
        runner()
            .run(
                &(event(), any::<usize>(), any::<u8>(), any::<bool>()),
                |(e, at, byte, cut)| {
                    let mut bytes = encode(&e);
                    let i = at % bytes.len();
                    if cut {
                        bytes.truncate(i)
                    } else {
                        bytes[i] = byte
                    }
                    // `decode` tries the fast reader first and falls back to the general decoder;
                    // the general decoder alone (serde) must give the same answer.
                    match (decode(&bytes), serde_json::from_slice::<Event>(&bytes)) {
                        (Ok(a), Ok(mut b)) => {
                            // A `v` mutated to 1 is upcast by `decode` (v1 -> v2), as documented.
                            if b.v == 1 {
                                b.v = 2
                            }
                            prop_assert_eq!(a, b)
                        }
                        (Err(_), Err(_)) => {}
                        (Ok(a), Err(_)) => prop_assert!(
                            a.v != SCHEMA_VERSION,
                            "the fast reader accepted bytes serde refuses: {:?}",
                            String::from_utf8_lossy(&bytes)
                        ),
                        // serde reads any `v`; `decode` refuses a version this code does not know.
                        (Err(e1), Ok(b)) => prop_assert!(
                            !(1..=SCHEMA_VERSION).contains(&b.v),
                            "decode refused bytes serde reads: {e1}"
                        ),
                    }
                    Ok(())
                },
            )
            .unwrap()
    });
}
