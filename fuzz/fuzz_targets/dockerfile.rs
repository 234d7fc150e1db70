//! Any bytes as a Dockerfile: parsing, then expanding, planning and reading the
//! `RUN --mount` flags of whatever parsed, must never panic.
#![no_main]

use std::collections::BTreeMap;

use berth_build::{parse, plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(df) = parse::parse(text) else {
        return;
    };
    let vars: BTreeMap<String, String> = [("HOME".to_string(), "/root".to_string())].into();
    for (i, stage) in df.stages.iter().enumerate() {
        let _ = parse::expand(&stage.base, &vars, df.escape);
        let _ = plan::dependencies(&df, i, &|w| w.to_string());
        for step in &stage.steps {
            let _ = parse::expand(&step.original, &vars, df.escape);
            if let parse::Instruction::Run { flags, .. } = &step.instruction {
                for m in flags.get("mount").into_iter().flatten() {
                    let _ = plan::RunMount::parse(m);
                }
            }
        }
    }
    if !df.stages.is_empty() {
        let _ = plan::needed(&df, df.stages.len() - 1, &|w| w.to_string());
    }
});
