#![no_main]
//! Arbitrary text through the ticket parser; whatever parses must print as a
//! ticket that parses to the same value.

use hayedik_proto::ticket::{parse_hex32, Ticket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_hex32(s);
    for candidate in [s.to_owned(), format!("hayedik://{s}")] {
        if let Ok(ticket) = candidate.parse::<Ticket>() {
            let printed = ticket.to_string();
            assert_eq!(printed.parse::<Ticket>(), Ok(ticket), "{printed}");
        }
    }
});
