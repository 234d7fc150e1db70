//! A test-sized fuzz run of the parser, variable expansion, glob matching and the
//! `RUN --mount` reader: seeded Dockerfiles cut, spliced and sprinkled with the
//! characters the grammar cares about, every result only required not to panic (and
//! parse errors to name a line inside the input). `BERTH_FUZZ_ITERATIONS` makes it
//! longer and `BERTH_FUZZ_SEED` another run; the default seed is fixed, so a failure
//! repeats.

use berth_build::{parse, plan};

const SEEDS: &[&str] = &[
    "# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox AS a\nRUN echo `\n  hi\n",
    "ARG V=1\nFROM ${V:-busybox}:${TAG:+x} AS build\nENV A=1 B=\"two words\" C='q'\nLABEL \"k\"=v\n",
    "FROM scratch\nCOPY --from=build --chown=1:2 --chmod=755 a* b? /dst/\nADD --checksum=sha256:00 http://x/y /\n",
    "FROM busybox\nRUN <<EOF\necho $HOME\nEOF\nCOPY <<-\"END\" /f\n\tbody\nEND\n",
    "FROM busybox\nRUN --mount=type=cache,target=/c,sharing=locked --mount=type=secret,id=s,required [\"sh\",\"-c\",\"x\"]\n",
    "FROM busybox\nHEALTHCHECK --interval=5s --retries=2 CMD [\"true\"]\nONBUILD RUN echo ${X##*/} ${Y%%.*} ${Z/a/b} ${#W}\n",
    "FROM busybox\nSHELL [\"/bin/sh\", \"-c\"]\nENTRYPOINT exec app\nCMD [\"--flag\"]\nEXPOSE 80/tcp 53/udp\nVOLUME [\"/data\"]\nUSER 1:1\nWORKDIR $HOME/x\nSTOPSIGNAL SIGTERM\nMAINTAINER me\n",
];

const SPICE: &[&str] = &[
    "\\", "\n", "`", "$", "${", "}", "\"", "'", "<<", "EOF", "--", "=", "[", "]", ",", ":-", "#",
    " ", "\t", "*", "?", "\r\n", "\u{feff}", "é", "\0",
];

/// xorshift64*: enough randomness for mutations, and the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(r: &mut Rng) -> String {
    let mut s: Vec<char> = SEEDS[r.below(SEEDS.len())].chars().collect();
    for _ in 0..1 + r.below(8) {
        let at = r.below(s.len() + 1);
        match r.below(4) {
            0 => {
                let spice: Vec<char> = SPICE[r.below(SPICE.len())].chars().collect();
                s.splice(at..at, spice);
            }
            1 if !s.is_empty() => {
                let end = (at + r.below(12)).min(s.len());
                s.drain(at.min(end)..end);
            }
            2 => {
                let other: Vec<char> = SEEDS[r.below(SEEDS.len())].chars().collect();
                let from = r.below(other.len());
                let to = (from + r.below(40)).min(other.len());
                s.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                if let Some(c) = s.get_mut(at) {
                    *c = char::from_u32(r.below(0x80) as u32).unwrap_or('x');
                }
            }
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_dockerfiles_never_panic() {
    let n: usize = std::env::var("BERTH_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed = std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_ef01_u64);
    let mut r = Rng(seed | 1);
    let (mut ok, mut errors) = (0, 0);
    for _ in 0..n {
        let text = mutate(&mut r);
        match plan::exercise(&text) {
            Ok(()) => ok += 1,
            Err(e) => {
                errors += 1;
                let lines = text.lines().count().max(1) + 1;
                assert!(
                    e.line <= lines,
                    "line {} of {lines}: {e} in {text:?}",
                    e.line
                );
            }
        }
        let word: String = text.chars().take(30).collect();
        let _ = parse::wildcard(&word, "some/path.txt");
        let _ = plan::RunMount::parse(&word);
    }
    // Both sides were reached: the mutations are neither all fatal nor all harmless.
    assert!(
        ok > n / 20 && errors > n / 20,
        "{ok} parsed, {errors} refused"
    );
}
