//! The wallet gateway: how the ledger asks a wallet provider to verify a binding and to
//! authorise a payment. Calls are slow and fallible and happen **outside** the single writer.
//! The built-in provider, deterministic from a seed, is
//! [`crate::adapters::provider::SimulatedGateway`].

use bindledger_events::{Currency, Factor, Provider};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

/// What a provider can answer instead of "yes".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFailure {
    WalletFrozen,
    WalletClosed,
    /// The provider has no such wallet account (a mistyped phone number).
    UnknownWallet,
    WrongPassword,
    FactorFailed(Factor),
    InsufficientFunds,
    Network,
    Maintenance,
}

/// A bind to verify. Secrets are borrowed for the call and never kept.
pub struct BindVerification<'a> {
    pub provider: &'a Provider,
    pub wallet_account: &'a str,
    pub payment_password: &'a str,
    pub factor: Option<(Factor, &'a str)>,
    pub event_time: DateTime<Utc>,
}

/// A payment to authorise against a binding's agreement.
pub struct PaymentAuthorization<'a> {
    pub provider: &'a Provider,
    /// The provider's reference for the binding, returned when it was verified.
    pub agreement_id: &'a str,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: Currency,
    pub payment_password: &'a str,
    pub factor: Option<(Factor, &'a str)>,
    pub event_time: DateTime<Utc>,
}

pub trait WalletGateway: Send + Sync + 'static {
    /// Verifies the wallet account and its secrets; on success returns the provider's
    /// agreement id for the new binding.
    fn verify_binding<'a>(&'a self, req: BindVerification<'a>) -> BoxFuture<'a, Result<String, GatewayFailure>>;
    /// Authorises a payment; on success returns the provider's authorization id.
    fn authorize_payment<'a>(&'a self, req: PaymentAuthorization<'a>) -> BoxFuture<'a, Result<String, GatewayFailure>>;
    /// Releases an authorisation the ledger did not record as a success (a race lost in the
    /// writer, a duplicate). Best effort.
    fn void_payment<'a>(&'a self, provider: &'a Provider, authorization_id: &'a str) -> BoxFuture<'a, ()>;
}
