using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>
/// termios(3) for a local terminal: raw mode set and restored in-process. (Running stty(1) does not hold: .NET puts
/// back the terminal settings it keeps whenever a child process of its own ends, which undoes what stty set.)
/// </summary>
public static unsafe partial class Termios
{
    /// <summary>sizeof(struct termios) on Linux is 60; a larger buffer is harmless.</summary>
    const int Size = 64;
    const int TCSANOW = 0;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcgetattr(int fd, byte* termios);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcsetattr(int fd, int optionalActions, byte* termios);
    [LibraryImport("libc")]
    private static partial void cfmakeraw(byte* termios);

    /// <summary>Puts the terminal on <paramref name="fd"/> in raw mode (no echo, no line editing, no signals from
    /// Ctrl-C or Ctrl-Z: every key is passed on); disposing restores what it was. Null if fd is no terminal.</summary>
    public static IDisposable? MakeRaw(int fd)
    {
        var saved = new byte[Size];
        fixed (byte* s = saved) if (tcgetattr(fd, s) != 0) return null;
        var raw = (byte[])saved.Clone();
        fixed (byte* r = raw)
        {
            cfmakeraw(r);
            if (tcsetattr(fd, TCSANOW, r) != 0) return null;
        }
        return new Restore(fd, saved);
    }

    sealed class Restore(int fd, byte[] saved) : IDisposable
    {
        int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) != 0) return;
            fixed (byte* s = saved) tcsetattr(fd, TCSANOW, s);
        }
    }
}
