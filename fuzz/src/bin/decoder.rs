//! `make fuzz` runs this target under AFL++; see `checks::decoder`.
#[path = "../checks.rs"]
mod checks;

fn main() {
    afl::fuzz!(|data: &[u8]| checks::decoder(data));
}
