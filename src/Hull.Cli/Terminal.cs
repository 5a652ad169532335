using Hull.Linux;

namespace Hull.Cli;

/// <summary>The local terminal: size and raw mode (restored on dispose).</summary>
static class Terminal
{
    public static (int Width, int Height) Size()
    {
        try { if (!Console.IsOutputRedirected) return (Math.Max(1, Console.WindowWidth),
            Math.Max(1, Console.WindowHeight)); }
        catch (IOException) { }
        return (80, 24);
    }

    /// <summary>Standard input as plain bytes from fd 0. Console.OpenStandardInput on a terminal reads through .NET's
    /// own line editor, which echoes, handles Ctrl-C and turns raw mode back off.</summary>
    public static Stream OpenStdin() => new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, false),
        FileAccess.Read, 1, false);

    /// <summary>Raw mode on stdin's terminal until disposed; null when stdin is not a terminal.</summary>
    public static IDisposable? MakeRaw() => Console.IsInputRedirected ? null : Termios.MakeRaw(0);
}
