using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using Hull.TestSupport;
using Xunit;

namespace Hull.Linux.Tests;

/// <summary>
/// The rooted extractor against hostile archives built here: layer 1 plants a symlink (absolute, or relative with
/// "..") to a sentinel directory outside the root, layer 2 writes, whites out or links through it. Each test checks
/// the sentinel is byte-for-byte as before and that what belongs in the root landed there.
/// </summary>
public sealed class RootedTarTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("hull-rootedtar-").FullName;
    readonly string _root, _host;
    Exception? _refused;

    public RootedTarTests()
    {
        _root = Path.Combine(_dir, "root");
        _host = Path.Combine(_dir, "host");
        Directory.CreateDirectory(_root);
        Directory.CreateDirectory(Path.Combine(_host, "sub"));
        File.WriteAllText(Path.Combine(_host, "keep"), "host file\n");
        File.WriteAllText(Path.Combine(_host, "x"), "host x\n");
        File.WriteAllText(Path.Combine(_host, "sub", "keep"), "host sub file\n");
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A relative symlink target that climbs out of the root (and far above it) to the sentinel.</summary>
    string RelativeToHost => string.Concat(Enumerable.Repeat("../", 12)) + _host.TrimStart('/');

    // ---- archive building ----

    static TarEntry File_(string name, string content, int mode = 0b110_100_100)
    {
        return new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            DataStream = new MemoryStream(Encoding.UTF8.GetBytes(content)), Mode = (UnixFileMode)mode,
        };
    }

    static TarEntry Dir_(string name) =>
        new PaxTarEntry(TarEntryType.Directory, name) { Mode = (UnixFileMode)0b111_101_101 };
    static TarEntry Link(string name, string target) =>
        new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = target };
    static TarEntry Hard(string name, string target) =>
        new PaxTarEntry(TarEntryType.HardLink, name) { LinkName = target };

    static MemoryStream Tar(params TarEntry[] entries)
    {
        var ms = new MemoryStream();
        using (var w = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
            foreach (var e in entries) w.WriteEntry(e);
        ms.Position = 0;
        return ms;
    }

    async Task ApplyAsync(params MemoryStream[] layers)
    {
        using var root = Sys.Open(_root, O.RDONLY | O.DIRECTORY);
        foreach (var l in layers) await RootedTar.ExtractAsync(l, root, new RootedTarOptions { Whiteouts = true });
    }

    /// <summary>Names, kinds and content hashes of everything under the sentinel.</summary>
    string Snapshot()
    {
        var sb = new StringBuilder();
        var all = Directory.EnumerateFileSystemEntries(_host, "*", SearchOption.AllDirectories);
        foreach (var p in all.Order(StringComparer.Ordinal))
        {
            var fi = new FileInfo(p);
            var isDir = fi.Attributes.HasFlag(FileAttributes.Directory);
            sb.Append(p).Append(' ').Append(isDir ? "dir" : fi.LinkTarget ?? "")
              .Append(isDir || fi.LinkTarget is not null ? "" : Hash(p))
              .Append('\n');
        }
        return sb.ToString();
    }

    async Task AssertHostUntouchedAsync(Func<Task> attack)
    {
        var before = Snapshot();
        try { await attack(); }
        catch (Exception e) when (e is RootedTarException or LinuxException) { _refused = e; }
        Assert.Equal(before, Snapshot());
    }

    /// <summary>Attacks that are confined (not refused) say so: the extraction must not have thrown.</summary>
    void AssertNotRefused() => Assert.Null(_refused);

    string InRoot(string path) => Path.Combine(_root, path.TrimStart('/'));

    // ---- attacks: symlink of an earlier layer used by a later entry ----

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task FileThroughSymlinkOfEarlierLayerLandsInTheRoot(bool absolute)
    {
        var target = absolute ? _host : RelativeToHost;
        await AssertHostUntouchedAsync(() => ApplyAsync(Tar(Link("evil", target)), Tar(File_("evil/planted", "x"))));
        AssertNotRefused();
        Assert.False(File.Exists(Path.Combine(_host, "planted")));
        Assert.Equal("x", File.ReadAllText(Path.Combine(InRoot(_host), "planted")));
        Assert.Equal(target, new FileInfo(InRoot("evil")).LinkTarget);
    }

    [Fact]
    public async Task FileThroughSymlinkOfTheSameArchiveLandsInTheRoot()
    {
        await AssertHostUntouchedAsync(() =>
            ApplyAsync(Tar(Link("evil", _host), File_("evil/planted", "x"), Dir_("evil/newdir"))));
        AssertNotRefused();
        Assert.True(File.Exists(Path.Combine(InRoot(_host), "planted")));
        Assert.True(Directory.Exists(Path.Combine(InRoot(_host), "newdir")));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task WhiteoutThroughSymlinkDeletesNothingOutside(bool absolute)
    {
        var target = absolute ? _host : RelativeToHost;
        await AssertHostUntouchedAsync(() =>
            ApplyAsync(Tar(Link("evil", target)), Tar(File_("evil/.wh.keep", ""), File_("evil/.wh.sub", ""))));
        AssertNotRefused();
        Assert.True(File.Exists(Path.Combine(_host, "keep")));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task OpaqueWhiteoutThroughSymlinkDeletesNothingOutside(bool absolute)
    {
        var target = absolute ? _host : RelativeToHost;
        await AssertHostUntouchedAsync(() => ApplyAsync(Tar(Link("evil", target)),
            Tar(File_("evil/.wh..wh..opq", ""), File_("evil/sub/.wh..wh..opq", ""))));
        AssertNotRefused();
        Assert.True(File.Exists(Path.Combine(_host, "sub", "keep")));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task HardLinkThroughSymlinkNeverReachesAHostFile(bool absolute)
    {
        var target = absolute ? _host : RelativeToHost;
        var before = new FileInfo(Path.Combine(_host, "keep"));
        await AssertHostUntouchedAsync(() => ApplyAsync(Tar(Link("evil", target)), Tar(Hard("stolen", "evil/keep"))));
        Assert.False(File.Exists(InRoot("stolen")));
        Assert.Equal(1, LinkCount(Path.Combine(_host, "keep")));
    }

    [Theory]
    [InlineData("/HOST/keep")]
    [InlineData("../../../../../../../../HOST/keep")]
    public async Task HardLinkToAHostPathIsRefused(string linkName)
    {
        linkName = linkName.Replace("/HOST", _host, StringComparison.Ordinal);
        var e = await Assert.ThrowsAsync<RootedTarException>(() => ApplyAsync(Tar(Hard("stolen", linkName))));
        Assert.Contains("not in the archive", e.Message);
        Assert.Equal(1, LinkCount(Path.Combine(_host, "keep")));
    }

    [Fact]
    public async Task HardLinkIsMadeInsideTheRoot()
    {
        await ApplyAsync(Tar(File_("a", "data")), Tar(Hard("b", "/a"), Hard("c", "../../a")));
        Assert.Equal(3, LinkCount(InRoot("a")));
    }

    [Theory]
    [InlineData("../../../../escaped", "escaped")]
    [InlineData("/abs/escaped", "abs/escaped")]
    [InlineData("a/../../../escaped2", "escaped2")]
    public async Task DotDotAndAbsoluteNamesAreConfined(string name, string lands)
    {
        var outside = Path.Combine(_dir, "escaped");
        await AssertHostUntouchedAsync(() => ApplyAsync(Tar(File_(name, "x"))));
        AssertNotRefused();
        Assert.False(File.Exists(outside));
        Assert.True(File.Exists(InRoot(lands)));
    }

    [Fact]
    public async Task FileReplacingASymlinkDoesNotWriteItsTarget()
    {
        await AssertHostUntouchedAsync(() =>
            ApplyAsync(Tar(Link("evil", Path.Combine(_host, "keep"))), Tar(File_("evil", "overwritten"))));
        AssertNotRefused();
        Assert.Equal("overwritten", File.ReadAllText(InRoot("evil")));
        Assert.Null(new FileInfo(InRoot("evil")).LinkTarget);
    }

    [Fact]
    public async Task DirectoryReplacingASymlinkTakesItsPlace()
    {
        await AssertHostUntouchedAsync(() =>
            ApplyAsync(Tar(Link("evil", _host)), Tar(Dir_("evil"), File_("evil/f", "in root"))));
        AssertNotRefused();
        Assert.Null(new FileInfo(InRoot("evil")).LinkTarget);
        Assert.Equal("in root", File.ReadAllText(InRoot("evil/f")));
    }

    [Fact]
    public async Task DeviceAndFifoReplacingASymlinkDoNotTouchItsTarget()
    {
        var dev = new PaxTarEntry(TarEntryType.CharacterDevice, "evil")
        {
            DeviceMajor = 1, DeviceMinor = 3, Mode = (UnixFileMode)0b110_110_110,
        };
        var fifo = new PaxTarEntry(TarEntryType.Fifo, "evil2") { Mode = (UnixFileMode)0b110_100_100 };
        var links = Tar(Link("evil", Path.Combine(_host, "keep")), Link("evil2", Path.Combine(_host, "x")));
        await AssertHostUntouchedAsync(() => ApplyAsync(links, Tar(dev, fifo)));
        AssertNotRefused();
        Assert.True(FsAtStat(InRoot("evil"), out var st) && (st.Mode & FsAt.S_IFMT) == FsAt.S_IFCHR);
        Assert.True(FsAtStat(InRoot("evil2"), out st) && (st.Mode & FsAt.S_IFMT) == FsAt.S_IFIFO);
    }

    [Fact]
    public async Task SymlinkChainsOutAreFollowedInsideTheRoot()
    {
        // a -> b/.., b -> /HOST: "a/b/x" and "b/x" both stay inside.
        await AssertHostUntouchedAsync(() =>
            ApplyAsync(Tar(Link("b", _host), Link("a", "b/../../../..")), Tar(File_("a/b/x", "1"), File_("b/x", "2"))));
        AssertNotRefused();
        Assert.Equal("host x\n", File.ReadAllText(Path.Combine(_host, "x")));
    }

    // ---- what should land does ----

    [Fact]
    public async Task KeepsModesOwnersTimesAndXattrs()
    {
        var mtime = new DateTimeOffset(2020, 1, 2, 3, 4, 5, TimeSpan.Zero);
        var f = new PaxTarEntry(TarEntryType.RegularFile, "bin/tool", new Dictionary<string, string>
        {
            ["SCHILY.xattr.user.note"] = "hello",
            // VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_RAW (bit 13).
            ["LIBARCHIVE.xattr.security.capability"] =
                Convert.ToBase64String([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            ["SCHILY.xattr.trusted.overlay.opaque"] = "y",
        })
        {
            DataStream = new MemoryStream("#!/bin/sh\n"u8.ToArray()), Mode = (UnixFileMode)0b100_111_101_101,
            Uid = 1234, Gid = 5678, ModificationTime = mtime,
        };
        var d = new PaxTarEntry(TarEntryType.Directory, "bin")
        {
            Mode = (UnixFileMode)0b111_101_000, Uid = 7, ModificationTime = mtime,
        };
        var s = new PaxTarEntry(TarEntryType.SymbolicLink, "bin/sh") { LinkName = "tool", Uid = 9, Gid = 9 };
        await ApplyAsync(Tar(d, f, s));
        Assert.True(FsAtStat(InRoot("bin/tool"), out var st));
        Assert.Equal(0b100_111_101_101u, st.Mode & 0xFFF);
        Assert.Equal((1234u, 5678u), (st.Uid, st.Gid));
        Assert.Equal(mtime, File.GetLastWriteTimeUtc(InRoot("bin/tool")));
        Assert.Equal(mtime, File.GetLastWriteTimeUtc(InRoot("bin")));
        Assert.True(FsAtStat(InRoot("bin"), out st) && (st.Mode & 0xFFF) == 0b111_101_000 && st.Uid == 7);
        Assert.True(FsAtStat(InRoot("bin/sh"), out st) && st.Uid == 9);
        Assert.Equal("hello", Py($"print(os.getxattr('{InRoot("bin/tool")}', 'user.note').decode(), end='')"));
        Assert.Contains("cap_net_raw", Run("getcap", InRoot("bin/tool")));
        Assert.DoesNotContain("trusted.overlay", Py($"print(os.listxattr('{InRoot("bin/tool")}'))"));
    }

    [Fact]
    public async Task WhiteoutsRemoveLowerContentAndOpaqueKeepsThisLayers()
    {
        await ApplyAsync(
            Tar(Dir_("etc"), File_("etc/a", "1"), File_("etc/b", "2"), Dir_("opt"), Dir_("opt/old"),
                File_("opt/old/f", "x"), File_("opt/lower", "x")),
            Tar(File_("etc/.wh.a", ""), File_("opt/new", "n"), File_("opt/old/g", "g"), File_("opt/.wh..wh..opq", "")));
        Assert.False(File.Exists(InRoot("etc/a")));
        Assert.True(File.Exists(InRoot("etc/b")));
        Assert.False(File.Exists(InRoot("opt/lower")));
        Assert.False(File.Exists(InRoot("opt/old/f")));
        Assert.True(File.Exists(InRoot("opt/new")));
        Assert.True(File.Exists(InRoot("opt/old/g")));
    }

    [Fact]
    public async Task ZeroRunsStaySparse()
    {
        var data = new byte[8 << 20];
        data[^1] = 1;
        var e = new PaxTarEntry(TarEntryType.RegularFile, "sparse") { DataStream = new MemoryStream(data) };
        await ApplyAsync(Tar(e));
        Assert.Equal(data.Length, new FileInfo(InRoot("sparse")).Length);
        Assert.True(long.Parse(Run("stat", "-c", "%b", InRoot("sparse")).Trim()) * 512 < 1 << 20);
        Assert.Equal(data, File.ReadAllBytes(InRoot("sparse")));
    }

    [Fact]
    public async Task ByteAndEntryLimitsStopTheArchive()
    {
        using var root = Sys.Open(_root, O.RDONLY | O.DIRECTORY);
        var big = Tar(File_("a", new string('a', 3000)), File_("b", new string('b', 3000)));
        var e = await Assert.ThrowsAsync<RootedTarLimitException>(() =>
            RootedTar.ExtractAsync(big, root, new RootedTarOptions { MaxBytes = 5000 }));
        Assert.False(e.Entries);
        Assert.False(File.Exists(InRoot("b")));
        var many = Tar(Enumerable.Range(0, 20).Select(i => File_($"f{i}", "")).ToArray());
        var e2 = await Assert.ThrowsAsync<RootedTarLimitException>(() =>
            RootedTar.ExtractAsync(many, root, new RootedTarOptions { MaxEntries = 10 }));
        Assert.True(e2.Entries);
        Assert.Equal(10, e2.Limit);
    }

    [Fact]
    public async Task TruncatedArchiveIsRefused()
    {
        var ms = Tar(File_("a", new string('a', 3000)));
        var cut = new MemoryStream(ms.ToArray()[..1000]);
        await Assert.ThrowsAnyAsync<Exception>(() => ApplyAsync(cut));
    }

    static string Py(string code) => Run("python3", "-c", "import os\n" + code);

    static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    static int LinkCount(string path) => int.Parse(Run("stat", "-c", "%h", path).Trim());

    static bool FsAtStat(string path, out FsAt.Stat st)
    {
        using var dir = Sys.Open(Path.GetDirectoryName(path)!, O.RDONLY | O.DIRECTORY);
        return FsAt.TryLstatAt(dir, Path.GetFileName(path), out st, out _);
    }

    static string Run(string program, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Requires.Program(program))
        {
            RedirectStandardOutput = true, RedirectStandardError = true,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return o;
    }
}
