//! The `easy-writer` binary: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    easy_writer::cli::main()
}
