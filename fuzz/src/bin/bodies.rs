//! `make fuzz` runs this target under AFL++; see `checks::bodies`.
#[path = "../checks.rs"]
mod checks;

fn main() {
    afl::fuzz!(|data: &[u8]| checks::bodies(data));
}
