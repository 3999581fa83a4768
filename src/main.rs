//! The `easy-writer` binary: parse the command line and hand over to the library.

/// jemalloc: cheaper than glibc's allocator on the request path, and with its background
/// thread it returns freed memory (argon2's 19 MiB buffers) to the OS within a second or two,
/// instead of keeping it in per-thread arenas.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (read by jemalloc itself through this symbol).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    easy_writer::cli::main()
}
