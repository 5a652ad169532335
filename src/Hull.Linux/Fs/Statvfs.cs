using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>statvfs(3) of a path (for the flags a bind remount must keep).</summary>
public readonly unsafe partial struct Statvfs
{
    public ulong Flags { get; }

    [StructLayout(LayoutKind.Sequential)]
    struct Raw
    {
        public ulong Bsize, Frsize, Blocks, Bfree, Bavail, Files, Ffree, Favail, Fsid, Flag, Namemax;
        public fixed int Spare[6];
    }

    [LibraryImport("libc", EntryPoint = "statvfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int NativeStatvfs(string path, void* buf);

    public Statvfs(string path)
    {
        Raw r;
        if (NativeStatvfs(path, &r) < 0) throw LinuxException.FromLastError($"statvfs {path}");
        Flags = r.Flag;
    }
}
