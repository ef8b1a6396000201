//! `make fuzz` runs this target under AFL++; see `checks::rules`.
#[path = "../checks.rs"]
mod checks;

fn main() {
    afl::fuzz!(|data: &[u8]| checks::rules(data));
}
