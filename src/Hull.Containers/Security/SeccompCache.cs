using System.Buffers.Binary;
using Hull.Linux;

namespace Hull.Containers;

/// <summary>
/// Compiled seccomp programs kept in the runtime's state directory, so that containers created from the same profile
/// (an engine's default, one image's) compile it once: compiling the default profile was ~12 % of the CPU of a whole
/// <c>run</c>. An entry is found by a hash of the profile but used only if the whole profile, as stored in the entry,
/// is byte-for-byte the one asked for; the key also names the compiling executable (path, size, modification time),
/// so an upgraded runtime never uses a program compiled by an older one. Notify profiles are not cached (the init
/// needs the compiler's full result for them). Entries are written atomically (rename); a damaged or unreadable
/// entry is a miss. At most <see cref="MaxEntries"/> entries are kept: past that, new programs are not stored.
/// </summary>
public sealed class SeccompCache(string directory)
{
    public const int MaxEntries = 256;
    static readonly byte[] Magic = "HSC1"u8.ToArray();

    public string Directory { get; } = directory;

    static string? _identity;

    /// <summary>What makes a compiled program valid besides the profile: this executable.</summary>
    static string Identity()
    {
        if (_identity is not null) return _identity;
        // This process's image (through /proc/self/exe: the runtime may run from a sealed view of its binary,
        // which has no path of its own but the binary's size and modification time).
        var exe = "/proc/self/exe";
        try
        {
            var fi = new FileInfo(exe);
            _identity = $"{exe}\n{fi.Length}\n{fi.LastWriteTimeUtc.Ticks}";
        }
        catch (IOException) { _identity = exe; }
        return _identity;
    }

    /// <summary>The cache key of a profile: the executable's identity and the profile's binary encoding.</summary>
    public static byte[] KeyOf(Hull.Oci.Seccomp profile)
    {
        var id = System.Text.Encoding.UTF8.GetBytes(Identity());
        var body = PlanCodec.EncodeSeccomp(profile);
        var key = new byte[4 + id.Length + body.Length];
        BinaryPrimitives.WriteInt32LittleEndian(key, id.Length);
        id.CopyTo(key, 4);
        body.CopyTo(key, 4 + id.Length);
        return key;
    }

    string PathOf(byte[] key)
    {
        // FNV-1a, 64 bit: only an index; the entry's stored key is compared in full.
        var h = 0xcbf29ce484222325UL;
        foreach (var b in key) { h ^= b; h *= 0x100000001b3UL; }
        return System.IO.Path.Combine(Directory, $"seccomp-{h:x16}.bpf");
    }

    public (byte[] Program, uint Flags)? TryGet(byte[] key)
    {
        byte[] data;
        try { data = File.ReadAllBytes(PathOf(key)); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        var s = data.AsSpan();
        if (s.Length < 16 || !s[..4].SequenceEqual(Magic)) return null;
        var keyLen = BinaryPrimitives.ReadInt32LittleEndian(s[4..]);
        if (keyLen != key.Length || s.Length < 8 + keyLen + 8 || !s.Slice(8, keyLen).SequenceEqual(key)) return null;
        var rest = s[(8 + keyLen)..];
        var flags = BinaryPrimitives.ReadUInt32LittleEndian(rest);
        var len = BinaryPrimitives.ReadInt32LittleEndian(rest[4..]);
        if (len <= 0 || len % 8 != 0 || rest.Length != 8 + len) return null;
        return (rest[8..].ToArray(), flags);
    }

    /// <summary>Stores a program; failures are ignored (the cache is only an optimization).</summary>
    public void Put(byte[] key, byte[] program, uint flags)
    {
        try
        {
            if (!System.IO.Directory.Exists(Directory))
            {
                if (Libc.mkdir(Directory, 0b111_000_000) < 0 && !System.IO.Directory.Exists(Directory)) return;
            }
            else if (System.IO.Directory.EnumerateFiles(Directory,
                "seccomp-*.bpf").Take(MaxEntries).Count() >= MaxEntries) return;
            var data = new byte[8 + key.Length + 8 + program.Length];
            Magic.CopyTo(data, 0);
            BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(4), key.Length);
            key.CopyTo(data, 8);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(8 + key.Length), flags);
            BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(12 + key.Length), program.Length);
            program.CopyTo(data, 16 + key.Length);
            var path = PathOf(key);
            var tmp = $"{path}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(tmp, data);
            File.Move(tmp, path, overwrite: true);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
