using System.Globalization;
using System.Text;

namespace Hull.Daemon;

/// <summary>
/// The members of a tar archive read from its headers, nothing unpacked: what GNU tar would make of each (name, type,
/// link target, stored size), so a backup can be judged before tar touches the disk. Reads ustar, GNU (long names,
/// old sparse) and pax (path, linkpath, size, GNU.sparse.name) headers. Anything it cannot account for exactly (a bad
/// checksum, an unknown header type or pax keyword, data on a member that has none) is an error, never skipped, so
/// the listing and GNU tar cannot disagree about which members there are. Errors are
/// <see cref="InvalidDataException"/>.
/// </summary>
public static class TarListing
{
    /// <summary>One member. <see cref="Type"/> is the ustar type flag ('0' regular, '1' hard link, '2' symlink, '3'
    /// char device, '4' block device, '5' directory, '6' fifo; GNU old sparse 'S' is reported as '0').</summary>
    public sealed record Member(string Name, char Type, string LinkName, long Size);

    const int Block = 512;

    // pax keywords GNU tar acts on that do not change which member a header describes, or that this reader applies.
    static readonly string[] KnownPax = ["path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime",
        "ctime"];
    static readonly string[] KnownPaxPrefixes =
        ["GNU.sparse.", "SCHILY.xattr.", "SCHILY.devmajor", "SCHILY.devminor", "SCHILY.dev", "SCHILY.ino",
        "SCHILY.nlink"];

    /// <summary>Reads every member up to the end-of-archive block, calling <paramref name="data"/> (if given) with
    /// the stream positioned at a regular member's data so the caller may read up to Size bytes of it.</summary>
    public static List<Member> Read(Stream s, Action<Member, Stream>? data = null)
    {
        var list = new List<Member>();
        var h = new byte[Block];
        string? longName = null, longLink = null;
        Dictionary<string, string>? pax = null;
        long offset = 0;
        while (true)
        {
            if (!ReadBlock(s, h, ref offset))
                throw new InvalidDataException("it ends without a tar end-of-archive block (truncated?)");
            if (h.AsSpan().IndexOfAnyExcept((byte)0) < 0)
            {
                if (longName is not null || longLink is not null || pax is not null)
                    throw Bad(offset, "an extended header is followed by the end of the archive");
                return list;
            }
            if (!ChecksumOk(h)) throw Bad(offset,
                "a header checksum does not match (not a tar archive, or a damaged one)");
            var type = (char)h[156];
            var size = Number(h.AsSpan(124, 12), offset, "size");
            var ustar = h.AsSpan(257, 6).SequenceEqual("ustar\0"u8);
            var gnu = h.AsSpan(257, 8).SequenceEqual("ustar  \0"u8);
            if (!ustar && !gnu) throw Bad(offset, "a header is neither ustar nor GNU (an old v7 archive?)");
            switch (type)
            {
                case 'L' or 'K':
                {
                    if (size is <= 0 or > 1 << 20) throw Bad(offset, "a GNU long name has an unlikely size");
                    var text = Str(ReadData(s, size, ref offset));
                    if (type == 'L') longName = text; else longLink = text;
                    continue;
                }
                case 'x' or 'g':
                {
                    if (size is < 0 or > 1 << 20) throw Bad(offset, "a pax header has an unlikely size");
                    var kv = Pax(ReadData(s, size, ref offset), offset);
                    if (type == 'g')
                    {
                        // Globals would apply to every later member: only harmless ones are taken.
                        if (kv.Keys.Any(k => k is "path" or "linkpath" or "size"
                            || k.StartsWith("GNU.sparse.", StringComparison.Ordinal)))
                            throw Bad(offset, "a pax global header sets a member's name, link or size");
                        continue;
                    }
                    pax = kv;
                    continue;
                }
            }
            var name = pax?.GetValueOrDefault("GNU.sparse.name") ?? pax?.GetValueOrDefault("path") ?? longName
                ?? (ustar && h[345] != 0 ? Str(h.AsSpan(345, 155)) + "/" + Str(h.AsSpan(0, 100))
                    : Str(h.AsSpan(0, 100)));
            var link = pax?.GetValueOrDefault("linkpath") ?? longLink ?? Str(h.AsSpan(157, 100));
            if (pax?.GetValueOrDefault("size") is { } ps)
                size = long.TryParse(ps, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v
                    : throw Bad(offset, "a pax size is not a number");
            longName = longLink = null;
            pax = null;
            if (type == 'S')
            {
                // GNU old sparse: more sparse map blocks follow while the "is extended" byte is set.
                var ext = h[482] != 0;
                var x = new byte[Block];
                while (ext)
                {
                    if (!ReadBlock(s, x, ref offset)) throw Bad(offset, "a sparse map is cut short");
                    ext = x[504] != 0;
                }
                type = '0';
            }
            else if (type == '\0') type = '0';
            if (type is not ('0' or '1' or '2' or '3' or '4' or '5' or '6'))
                throw Bad(offset, $"member '{name}' has tar type '{type}', which a Hull backup never holds");
            if (size < 0 || (size > 0 && type != '0'))
                throw Bad(offset, $"member '{name}' of type '{type}' carries {size} bytes of data");
            var m = new Member(name, type, link, size);
            list.Add(m);
            var start = offset;
            var dataEnd = start + (size + Block - 1) / Block * Block;
            if (data is not null && size > 0)
            {
                var sub = new Slice(s, size);
                data(m, sub);
                offset += sub.Consumed;
            }
            Skip(s, dataEnd - offset, ref offset);
        }
    }

    static InvalidDataException Bad(long offset, string what) => new($"{what} (near byte {offset})");

    static bool ChecksumOk(byte[] h)
    {
        long sum = 0;
        for (var i = 0; i < Block; i++) sum += i is >= 148 and < 156 ? (byte)' ' : h[i];
        var field = Str(h.AsSpan(148, 8)).Trim(' ', '\0');
        return field.Length > 0 && field.All(c => c is >= '0' and <= '7') && Convert.ToInt64(field, 8) == sum;
    }

    static long Number(ReadOnlySpan<byte> f, long offset, string what)
    {
        if ((f[0] & 0x80) != 0)
        {
            // base-256 (GNU): big-endian, the top bit of the first byte set.
            if ((f[0] & 0x40) != 0) throw Bad(offset, $"a negative {what}");
            long v = f[0] & 0x3f;
            for (var i = 1; i < f.Length; i++)
            {
                if (v > long.MaxValue >> 8) throw Bad(offset, $"a {what} too large");
                v = (v << 8) | f[i];
            }
            return v;
        }
        var t = Str(f).Trim(' ', '\0');
        if (t.Length == 0) return 0;
        if (t.Length > 21 || !t.All(c => c is >= '0' and <= '7')) throw Bad(offset,
            $"a {what} that is not an octal number");
        return Convert.ToInt64(t, 8);
    }

    static string Str(ReadOnlySpan<byte> b)
    {
        var n = b.IndexOf((byte)0);
        return Encoding.UTF8.GetString(n < 0 ? b : b[..n]);
    }

    static Dictionary<string, string> Pax(byte[] data, long offset)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        var i = 0;
        while (i < data.Length && data[i] != 0)
        {
            var sp = Array.IndexOf(data, (byte)' ', i);
            if (sp < 0 || !int.TryParse(data.AsSpan(i, sp - i), NumberStyles.None, CultureInfo.InvariantCulture,
                out var len) ||
                len <= sp - i + 1 || i + len > data.Length || data[i + len - 1] != '\n')
                throw Bad(offset, "a pax record is malformed");
            var rec = data.AsSpan(sp + 1, i + len - 1 - (sp + 1));
            var eq = rec.IndexOf((byte)'=');
            if (eq <= 0) throw Bad(offset, "a pax record has no keyword");
            var key = Encoding.UTF8.GetString(rec[..eq]);
            if (!KnownPax.Contains(key) && !KnownPaxPrefixes.Any(p => key.StartsWith(p, StringComparison.Ordinal)))
                throw Bad(offset, $"pax keyword '{key}' is not one hull export writes");
            d[key] = Encoding.UTF8.GetString(rec[(eq + 1)..]);
            i += len;
        }
        return d;
    }

    static bool ReadBlock(Stream s, byte[] b, ref long offset)
    {
        var n = s.ReadAtLeast(b, Block, throwOnEndOfStream: false);
        offset += n;
        return n == Block;
    }

    static byte[] ReadData(Stream s, long size, ref long offset)
    {
        var b = new byte[size];
        if (s.ReadAtLeast(b, b.Length, throwOnEndOfStream: false) != b.Length) throw Bad(offset,
            "an extended header is cut short");
        offset += size;
        Skip(s, (Block - size % Block) % Block, ref offset);
        return b;
    }

    static void Skip(Stream s, long n, ref long offset)
    {
        if (n == 0) return;
        if (s.CanSeek)
        {
            if (s.Position + n > s.Length) throw new InvalidDataException("it is truncated inside a member's data");
            s.Seek(n, SeekOrigin.Current);
            offset += n;
            return;
        }
        var buf = new byte[64 * 1024];
        while (n > 0)
        {
            var r = s.Read(buf, 0, (int)Math.Min(buf.Length, n));
            if (r == 0) throw new InvalidDataException("it is truncated inside a member's data");
            n -= r;
            offset += r;
        }
    }

    /// <summary>A read-only window on the next <c>length</c> bytes of a stream.</summary>
    sealed class Slice(Stream inner, long length) : Stream
    {
        public long Consumed { get; private set; }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => length;
        public override long Position { get => Consumed; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int off, int count)
        {
            var n = inner.Read(buffer, off, (int)Math.Min(count, length - Consumed));
            Consumed += n;
            return n;
        }
        public override long Seek(long o, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int off, int count) => throw new NotSupportedException();
    }
}
