use clap::Parser;

mod cli;

/// Keeps freed tensor buffers in the heap for reuse. glibc hands every allocation above its
/// mmap threshold (128 KiB, growing up to 32 MiB) to a fresh `mmap`, and the kernel zero-fills
/// each page on first touch: the CPU backends allocate tensors of tens of MiB per layer call,
/// and those page faults cost up to half of a MoE layer's time (see BENCHMARKS.md). The same
/// setting as `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = cli::run(cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
