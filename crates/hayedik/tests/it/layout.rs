//! The binary's code is laid out by use (build.rs, `hot-text.ld`): the
//! functions that a sharer, a getter, a seeder and a tracker run are linked
//! together in `.text.hot`, before the rest of the code, so that a process
//! maps a few MB of code rather than nearly all of it (issue 13's peak RSS;
//! docs/performance.md, "Code laid out by use").

use std::collections::HashMap;

use crate::harness::BIN;

/// Section name -> (address, size), from the ELF64 section headers.
fn sections(elf: &[u8]) -> HashMap<String, (u64, u64)> {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF file");
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28) as usize,
        u16_at(0x3a),
        u16_at(0x3c),
        u16_at(0x3e),
    );
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 24) as usize;
    (0..shnum)
        .map(|i| {
            let h = header(i);
            let name = &elf[names + u32_at(h)..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
            (
                String::from_utf8_lossy(name).into_owned(),
                (u64_at(h + 16), u64_at(h + 32)),
            )
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(hot_text),
    ignore = "needs the binary linked with hot-text.ld (Linux, without HAYEDIK_NO_HOT_TEXT)"
)]
fn the_code_that_runs_is_linked_together_before_the_rest() {
    let elf = std::fs::read(BIN).unwrap();
    let sections = sections(&elf);
    let Some(&(hot_at, hot)) = sections.get(".text.hot") else {
        panic!("{BIN} has no .text.hot section: it was linked without hot-text.ld");
    };
    let (text_at, text) = sections[".text"];
    eprintln!("{BIN}: .text.hot {hot} bytes, .text {text} bytes");
    // The list names about 2 MB of functions (that much ran in
    // bench/hot-text.sh). A list that no longer matches this build leaves a
    // small section: regenerate it.
    assert!(
        hot >= 1 << 20,
        ".text.hot holds {hot} bytes: hot-text.ld no longer matches this build's names \
         (run bench/hot-text.sh)"
    );
    assert!(
        hot < text,
        "the hot section is larger than the rest of the code"
    );
    assert!(
        hot_at < text_at,
        "the hot section is not before the rest of the code"
    );
}
