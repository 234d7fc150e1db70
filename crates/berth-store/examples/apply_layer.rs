//! Applies a layer file to a directory and prints its diffID: the benchmark's driver.
//! Usage: apply_layer LAYER DIR

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: apply_layer LAYER DIR");
        std::process::exit(2);
    }
    let file = std::fs::File::open(&args[1]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[1]);
        std::process::exit(1)
    });
    std::fs::create_dir_all(&args[2]).unwrap();
    match berth_store::layer::apply(std::path::Path::new(&args[2]), file) {
        Ok(a) => println!("{} {} entries {} bytes", a.diff_id, a.entries, a.size),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
