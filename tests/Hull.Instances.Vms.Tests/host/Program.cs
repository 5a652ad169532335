namespace Hull.VmTestHost;

public static class Program
{
    public static Task<int> Main(string[] args) =>
        args.Length > 0 && args[0] == "cli" ? Hull.Cli.CliApp.RunAsync(args[1..]) : Hull.Daemon.Program.Main(args);
}
