using System.Text;

namespace Hull.Vm.Image;

/// <summary>Writes a "newc" cpio archive (the initramfs format the Linux kernel unpacks).</summary>
public sealed class CpioWriter(Stream output) : IDisposable
{
    int _ino = 1;
    long _pos;
    readonly HashSet<string> _dirs = ["."];

    public void Directory(string path, uint mode = 0b111_101_101)
    {
        path = Norm(path);
        if (!_dirs.Add(path)) return;
        EnsureParents(path);
        Entry(path, 0x4000 | mode, [], 2);
    }

    public void File(string path, ReadOnlySpan<byte> data, uint mode = 0b110_100_100)
    {
        path = Norm(path);
        EnsureParents(path);
        Entry(path, 0x8000 | mode, data, 1);
    }

    public void Symlink(string path, string target)
    {
        path = Norm(path);
        EnsureParents(path);
        Entry(path, 0xA000 | 0b111_111_111, Encoding.UTF8.GetBytes(target), 1);
    }

    /// <summary>A character device node (e.g. /dev/console, needed before devtmpfs is mounted).</summary>
    public void CharDevice(string path, uint major, uint minor, uint mode = 0b110_000_000)
    {
        path = Norm(path);
        EnsureParents(path);
        Entry(path, 0x2000 | mode, [], 1, major, minor);
    }

    void EnsureParents(string path)
    {
        var parent = Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(parent) && !_dirs.Contains(parent)) Directory(parent);
    }

    static string Norm(string p) => p.TrimStart('/');

    void Entry(string name, uint mode, ReadOnlySpan<byte> data, int nlink, uint rmajor = 0, uint rminor = 0)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var h = new StringBuilder("070701");
        void X(long v) => h.Append(((uint)v).ToString("X8", System.Globalization.CultureInfo.InvariantCulture));
        X(name == "TRAILER!!!" ? 0 : _ino++); X(mode); X(0); X(0); X(nlink); X(0); X(data.Length);
        X(0); X(0); X(rmajor); X(rminor); X(nameBytes.Length + 1); X(0);
        Write(Encoding.ASCII.GetBytes(h.ToString()));
        Write(nameBytes);
        Write([0]);
        Pad();
        Write(data);
        Pad();
    }

    void Write(ReadOnlySpan<byte> b)
    {
        output.Write(b);
        _pos += b.Length;
    }

    void Pad()
    {
        var n = (int)((4 - _pos % 4) % 4);
        if (n > 0) Write(new byte[n]);
    }

    public void Dispose()
    {
        Entry("TRAILER!!!", 0, [], 1);
        output.Flush();
    }
}
