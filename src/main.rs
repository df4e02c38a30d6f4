fn main() -> std::process::ExitCode {
    nodewave::cli::main()
}
