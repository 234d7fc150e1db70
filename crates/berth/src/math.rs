//! The two functions of the C maths library that code in this binary calls (`pow`:
//! tokio's scheduler statistics and libcgroups' cgroup v2 weight conversion; `log2`: the
//! latter), defined here from the pure-Rust `libm` crate so that the binary does not need
//! libm.so.6 at all. Every Berth process (CLI, daemon, shim, runtime, container init)
//! then loads one shared library fewer: ld.so no longer runs libm's IFUNC resolvers, whose
//! code and its 64 KiB fault-around windows left ~0.5 MiB of libm resident in each
//! process (benches/lifecycle.sh counts it in the daemon's RSS and every shim's).
//! Should other code need more of libm, the linker simply links libm.so again.

#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[no_mangle]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_results_as_the_c_library_would_give() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(10.0, -2.0), 0.01);
        assert_eq!(super::log2(8.0), 3.0);
        assert!(super::log2(-1.0).is_nan());
        // libcgroups' cpu.weight from shares: 10^((l^2 + 125 l) / 612 - 7/34), l = log2(shares),
        // rounded up: 2 -> 1, 1024 -> 100, 262144 -> 10000.
        for (shares, weight) in [(2.0, 1.0), (1024.0, 100.0), (262144.0, 10000.0)] {
            let l = super::log2(shares);
            let w = super::pow(10.0, (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0);
            assert_eq!(w.ceil(), weight, "{shares}");
        }
    }
}
