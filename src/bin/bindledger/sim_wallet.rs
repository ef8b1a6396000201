//! `bindledger sim-wallet`: what the simulated provider knows of a wallet (its password, codes,
//! standing and balance), to try the API by hand.

use anyhow::Result;
use bindledger::adapters::provider::SimulatedGateway;

use crate::{load_config, Common};

pub fn run(common: &Common, provider: &str, wallet_account: &str) -> Result<i32> {
    let config = load_config(common)?;
    let provider = bindledger_events::Provider::parse(provider)?;
    let g = SimulatedGateway::new(config.gateway.simulated.clone());
    let f = |factor| g.factor_code_for(&provider, wallet_account, factor);
    use bindledger_events::Factor;
    outln!(
        "provider:          {provider} (simulated, seed {})",
        config.gateway.simulated.seed
    );
    outln!("standing:          {:?}", g.wallet_status(&provider, wallet_account));
    outln!("payment_password:  {}", g.password_for(&provider, wallet_account));
    outln!("sms code:          {}", f(Factor::Sms));
    outln!("fingerprint:       {}", f(Factor::Fingerprint));
    outln!("face:              {}", f(Factor::Face));
    outln!(
        "balance:           {}",
        bindledger_events::Currency::CNY.format(g.initial_balance_minor(&provider, wallet_account))
    );
    Ok(0)
}
