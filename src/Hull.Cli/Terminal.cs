using Hull.Api;
using Hull.Linux;

namespace Hull.Cli;

/// <summary>The local terminal: size and raw mode (through stty, restored on dispose).</summary>
static class Terminal
{
    public static (int Width, int Height) Size()
    {
        try { if (!Console.IsOutputRedirected) return (Math.Max(1, Console.WindowWidth),
            Math.Max(1, Console.WindowHeight)); }
        catch (IOException) { }
        return (80, 24);
    }

    public static IDisposable? MakeRaw()
    {
        if (Console.IsInputRedirected) return null;
        var saved = Stty("-g");
        if (saved is null) return null;
        Stty("raw -echo");
        return new Restore(saved.Trim());
    }

    sealed class Restore(string saved) : IDisposable { public void Dispose() => Stty(saved); }

    static string? Stty(string args)
    {
        try
        {
            var r = HostProgram.ExecAsync("stty", args.Split(' '), new() { InheritStdin = true },
                CancellationToken.None)
                .GetAwaiter().GetResult();
            return r.ExitCode == 0 ? r.Stdout : null;
        }
        catch (HostProgramException) { return null; }
    }
}
