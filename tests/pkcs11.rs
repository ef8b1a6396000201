//! The PKCS#11 key store against a real token (SoftHSM2, from Debian's packages): the master
//! keys are generated on the token, sensitive and never extractable, so their value cannot be
//! read out of it; wrapping and unwrapping are calls to the token; a destroyed generation opens
//! nothing. (The ledger on a token, end to end: `tests/privacy.rs`.) One test in this binary:
//! it sets the process's `SOFTHSM2_CONF`.

mod common;

use bindledger::ledger::keystore::{KeyStore, Pkcs11Config, Pkcs11KeyStore};
use common::*;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};

#[test]
fn master_keys_never_leave_the_token_and_a_destroyed_generation_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm(dir.path());
    // The only test of this binary: no other thread reads the environment meanwhile.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let config = Pkcs11Config {
        module: SOFTHSM_MODULE.into(),
        token: "bindledger".into(),
        pin: "4321".into(),
        label: "bindledger-master".into(),
    };
    let store = Pkcs11KeyStore::open(&config).unwrap();
    assert_eq!(store.generations().unwrap(), vec![1]);
    let key = [9u8; 32];
    let w1 = store.wrap(&key, b"acct-1").unwrap();
    assert_eq!(w1.generation, 1);
    assert_eq!(w1.bytes.len(), 12 + 32 + 16, "nonce, ciphertext, tag");
    assert!(memchr::memmem::find(&w1.bytes, &key).is_none());
    assert_eq!(store.unwrap(&w1, b"acct-1").unwrap(), Some(key));
    assert_eq!(store.unwrap(&w1, b"acct-2").unwrap(), None, "bound to its account");
    assert_eq!(store.rotate().unwrap(), 2);
    let w2 = store.wrap(&key, b"acct-1").unwrap();
    assert_eq!(w2.generation, 2);

    // Generation 1 destroyed on the token: what it wrapped opens under nothing, even after the
    // store is opened again; generation 2's still opens.
    store.destroy(1).unwrap();
    assert_eq!(store.unwrap(&w1, b"acct-1").unwrap(), None);
    drop(store);
    let store = Pkcs11KeyStore::open(&config).unwrap();
    assert_eq!(store.generations().unwrap(), vec![2]);
    assert_eq!(store.unwrap(&w1, b"acct-1").unwrap(), None);
    assert_eq!(store.unwrap(&w2, b"acct-1").unwrap(), Some(key));
    // Read from the token with a session of our own (the store closed first: one PKCS#11
    // context per process): the key is there, and its value is not to be had.
    drop(store);
    let ctx = cryptoki::context::Pkcs11::new(SOFTHSM_MODULE).unwrap();
    ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ))
    .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == "bindledger")
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::new("4321".into())),
        )
        .unwrap();
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 1, "generation 2 alone");
    for h in &keys {
        let attrs = session
            .get_attributes(
                *h,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                ],
            )
            .unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
        let value = session.get_attribute_info(*h, &[AttributeType::Value]).unwrap();
        assert!(
            matches!(value[..], [AttributeInfo::Sensitive]),
            "the key's value is never returned: {value:?}"
        );
    }
}
