use clap::Parser;

mod cli;

/// Keeps freed tensor buffers in the heap for reuse. glibc hands every allocation above its
/// mmap threshold (128 KiB, growing up to 32 MiB) to a fresh `mmap`, and the kernel zero-fills
/// each page on first touch: the CPU backends allocate tensors of tens of MiB per layer call,
/// and those page faults cost up to half of a MoE layer's time (see BENCHMARKS.md). The
/// threshold is 1 GiB: at 32 MiB a `[16384, 512]` f32 activation (exactly 32 MiB) was still
/// mapped afresh at every call. The same setting as `MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Lets a closed stdout end the process as it ends any Unix tool (`burn-moe place ... | head`),
/// instead of Rust's default of ignoring SIGPIPE and panicking in `println!`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn default_sigpipe() {}

/// Ends the process with `code` without running the C library's exit handlers. Burn's default
/// device is wgpu, and creating it loads Mesa's EGL, whose exit-time destructor races with its
/// own driver threads: a process that had finished its work cleanly aborted with "double free or
/// corruption" in about 1 of 15 runs. Everything the command line writes is synced to disk
/// before this point, so the handlers have nothing left to do; stdout and stderr are flushed.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    std::io::stdout().flush().ok();
    std::io::stderr().flush().ok();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `_exit` ends the process at once; no Rust code runs after it.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    std::process::exit(code)
}

fn main() {
    tune_allocator();
    default_sigpipe();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let code = match cli::run(cli::Cli::parse()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    exit_now(code)
}
