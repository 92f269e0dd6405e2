//! The `csai-sidecar` binary; the commands live in `csai_sidecar::cli`.

fn main() -> std::process::ExitCode {
    csai_sidecar::cli::run()
}
