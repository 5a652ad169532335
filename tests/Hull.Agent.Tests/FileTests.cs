using System.Security.Cryptography;
using Hull.Agent.Protocol;
using Hull.TestSupport;
using Xunit;

namespace Hull.Agent.Tests;

public class FileTests(AgentConnection conn) : IClassFixture<AgentConnection>
{
    AgentClient Client => conn.Client;

    [Fact]
    public async Task Pushes_and_pulls_20_MB_intact()
    {
        using var dir = new TempDir("hull-agent-files");
        var data = RandomNumberGenerator.GetBytes(20 * 1024 * 1024 + 123);
        var path = Path.Combine(dir.Path, "a", "b", "blob.bin");
        var stat = await Client.PushFileAsync(new PushRequest { Path = path, Mode = 0b110_100_000, MakeParents = true },
            new MemoryStream(data));
        Assert.Equal(data.Length, stat.Size);
        Assert.Equal("file", stat.Type);
        Assert.Equal(0b110_100_000u, stat.Mode);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(await File.ReadAllBytesAsync(path)));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead,
            File.GetUnixFileMode(path));
        Assert.Single(Directory.GetFiles(Path.GetDirectoryName(path)!)); // no temporary file left behind

        var back = new MemoryStream();
        var pulled = await Client.PullFileAsync(path, back);
        Assert.Equal(data.Length, pulled.Size);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(back.ToArray()));
    }

    [Fact]
    public async Task Push_replaces_a_file_atomically_and_keeps_the_old_one_on_failure()
    {
        using var dir = new TempDir("hull-agent-files");
        var path = Path.Combine(dir.Path, "conf");
        await File.WriteAllTextAsync(path, "old");
        await Client.PushFileAsync(new PushRequest { Path = path }, new MemoryStream("new"u8.ToArray()));
        Assert.Equal("new", await File.ReadAllTextAsync(path));

        // A content stream that fails half way: the push is abandoned, the old file stays, no temporary file remains.
        await Assert.ThrowsAnyAsync<Exception>(() =>
            Client.PushFileAsync(new PushRequest { Path = path }, new FailingStream(100_000)));
        Assert.Equal("new", await File.ReadAllTextAsync(path));
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Directory.GetFiles(dir.Path).Length != 1 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Equal([path], Directory.GetFiles(dir.Path));
    }

    [SkippableFact]
    public async Task Push_sets_owner_and_special_mode_bits()
    {
        Requires.Root();
        using var dir = new TempDir("hull-agent-files");
        var path = Path.Combine(dir.Path, "tool");
        var stat = await Client.PushFileAsync(new PushRequest { Path = path, Mode = 0b100_111_101_101, Uid = 1234,
            Gid = 2345 }, new MemoryStream([1, 2, 3]));
        Assert.Equal(1234u, stat.Uid);
        Assert.Equal(2345u, stat.Gid);
        Assert.Equal(0b100_111_101_101u, stat.Mode); // setuid survives the chown
        var s2 = await Client.StatAsync(path);
        Assert.Equal(1234u, s2.Uid);
    }

    [Fact]
    public async Task Pulling_a_missing_file_says_so_with_the_errno()
    {
        var e = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.PullFileAsync("/no/such/file-hull", new MemoryStream()));
        Assert.Equal(2, e.Errno);
        Assert.Equal("ENOENT", e.ErrnoName);
        Assert.Contains("/no/such/file-hull", e.Message);
        Assert.Contains("No such file or directory", e.Message);
        // The connection is fine afterwards.
        Assert.Equal("directory", (await Client.StatAsync("/tmp")).Type);
    }

    [Fact]
    public async Task Pulling_a_directory_is_refused()
    {
        var e = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.PullFileAsync("/tmp", new MemoryStream()));
        Assert.Equal("EISDIR", e.ErrnoName);
    }

    [Fact]
    public async Task Push_into_a_missing_directory_names_the_fix()
    {
        using var dir = new TempDir("hull-agent-files");
        var e = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.PushFileAsync(new PushRequest { Path = Path.Combine(dir.Path, "nope", "f") },
                new MemoryStream([1])));
        Assert.Contains("does not exist", e.Message);
        Assert.Contains("parent", e.Message);
        await Assert.ThrowsAsync<ArgumentException>(() =>
            Client.PushFileAsync(new PushRequest { Path = "relative/f" }, new MemoryStream([1])));
    }

    [Fact]
    public async Task Stats_makes_and_removes_directories()
    {
        using var dir = new TempDir("hull-agent-files");
        var deep = Path.Combine(dir.Path, "x", "y", "z");
        var made = await Client.MkdirAsync(new MkdirRequest { Path = deep, Parents = true, Mode = 0b111_000_000 });
        Assert.Equal("directory", made.Type);
        Assert.Equal(0b111_000_000u, made.Mode);
        Assert.True(Directory.Exists(deep));
        // mkdir -p of an existing directory is fine
        await Client.MkdirAsync(new MkdirRequest { Path = deep, Parents = true });
        var e = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.MkdirAsync(new MkdirRequest { Path = deep }));
        Assert.Equal("EEXIST", e.ErrnoName);

        File.WriteAllText(Path.Combine(deep, "f"), "x");
        File.CreateSymbolicLink(Path.Combine(dir.Path, "link"), "x/y");
        var link = await Client.StatAsync(Path.Combine(dir.Path, "link"));
        Assert.Equal("symlink", link.Type);
        Assert.Equal("x/y", link.LinkTarget);
        var f = await Client.StatAsync(Path.Combine(deep, "f"));
        Assert.Equal(1, f.Size);

        var notEmpty = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.RemoveAsync(Path.Combine(dir.Path, "x")));
        Assert.Equal("ENOTEMPTY", notEmpty.ErrnoName);
        await Client.RemoveAsync(Path.Combine(dir.Path, "link"));
        Assert.True(Directory.Exists(Path.Combine(dir.Path, "x", "y"))); // removing a link leaves its target
        await Client.RemoveAsync(Path.Combine(dir.Path, "x"), recursive: true);
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "x")));
        var gone = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.StatAsync(Path.Combine(dir.Path, "x")));
        Assert.Equal("ENOENT", gone.ErrnoName);
    }

    [Fact]
    public async Task Lists_a_directory_in_several_parts_without_following_links()
    {
        using var dir = new TempDir("hull-agent-files");
        // Long names: the listing needs several Result frames.
        var names = Enumerable.Range(0, 600).Select(i => $"{i:D4}-" + new string('n', 200)).ToList();
        foreach (var n in names) File.WriteAllText(Path.Combine(dir.Path, n), n[..4]);
        Directory.CreateDirectory(Path.Combine(dir.Path, "sub"));
        File.CreateSymbolicLink(Path.Combine(dir.Path, "link"), "sub");
        var list = await Client.ListAsync(dir.Path);
        Assert.Equal(names.Count + 2, list.Count);
        Assert.Equal([.. names, "link", "sub"],
            list.Select(e => Path.GetFileName(e.Path)).Order(StringComparer.Ordinal).ToArray());
        Assert.All(list.Where(e => e.Type == "file"), e => Assert.Equal(4, e.Size));
        var link = list.Single(e => e.Path.EndsWith("/link", StringComparison.Ordinal));
        Assert.Equal("symlink", link.Type);
        Assert.Equal("sub", link.LinkTarget);
        Assert.Equal("directory", list.Single(e => e.Path.EndsWith("/sub", StringComparison.Ordinal)).Type);
        Assert.Empty(await Client.ListAsync(Path.Combine(dir.Path, "sub")));

        var notDir = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.ListAsync(Path.Combine(dir.Path, names[0])));
        Assert.Equal("ENOTDIR", notDir.ErrnoName);
        var missing = await Assert.ThrowsAsync<AgentOperationException>(() =>
            Client.ListAsync(Path.Combine(dir.Path, "nope")));
        Assert.Equal("ENOENT", missing.ErrnoName);
    }

    [Fact]
    public async Task Concurrent_transfers_share_the_connection()
    {
        using var dir = new TempDir("hull-agent-files");
        var blobs = Enumerable.Range(0, 6).Select(_ => RandomNumberGenerator.GetBytes(3 * 1024 * 1024)).ToArray();
        await Task.WhenAll(blobs.Select((b, i) =>
            Client.PushFileAsync(new PushRequest { Path = Path.Combine(dir.Path, $"f{i}") }, new MemoryStream(b))));
        var outs = blobs.Select(_ => new MemoryStream()).ToArray();
        await Task.WhenAll(blobs.Select((_, i) => Client.PullFileAsync(Path.Combine(dir.Path, $"f{i}"), outs[i])));
        for (var i = 0; i < blobs.Length; i++) Assert.Equal(blobs[i], outs[i].ToArray());
    }
}

/// <summary>Yields some bytes, then throws, like a source file that became unreadable.</summary>
sealed class FailingStream(int failAfter) : Stream
{
    int _given;
    public override int Read(byte[] buffer, int offset, int count)
    {
        if (_given >= failAfter) throw new IOException("source failed");
        var n = Math.Min(count, failAfter - _given);
        Array.Fill(buffer, (byte)'x', offset, n);
        _given += n;
        return n;
    }
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set =>
        throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
