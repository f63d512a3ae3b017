//! The x86_64 syscall table (name → number) for the seccomp filters, read from the kernel's
//! UAPI header (linux-libc-dev, which build-essential brings) at build time.

fn main() {
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    println!("cargo:rerun-if-changed={header}");
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| panic!("{header}: {e} (install linux-libc-dev: scripts/install-deps.sh)"));
    let mut table = String::from(
        "/// x86_64 syscalls by name (from the kernel's unistd_64.h).\npub const SYSCALLS: &[(&str, i64)] = &[\n",
    );
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (w.next(), w.next(), w.next()) {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<i64>()) {
                table.push_str(&format!("    ({name:?}, {nr}),\n"));
            }
        }
    }
    table.push_str("];\n");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("syscalls.rs");
    std::fs::write(out, table).unwrap();
}
