using System.Net.Sockets;
using System.Text;
using Hull.TestSupport;
using Hull.Vm;
using Hull.Vm.Image;
using Xunit;

namespace Hull.Vm.Tests;

/// <summary>The image and cache shared by the VM tests (built once, cached under artifacts/).</summary>
public static class TestImages
{
    public static string CacheDir { get; } = Path.Combine(Repo.Root, "artifacts", "vm-cache");
    public static VmHostOptions Host { get; } = new() { CacheDir = CacheDir };

    /// <summary>The test image: the default image plus an echo loop on the agent port (the channel test's peer).</summary>
    public const string EchoLoop = "( while true; do cat 0<>" + AgentChannel.GuestDevice + " 1>&0; sleep 0.2; done ) &";

    static readonly SemaphoreSlim s_lock = new(1, 1);
    static DefaultImageInfo? s_image;

    public static void RequireVmHost()
    {
        Requires.Root();
        Requires.Program("qemu-system-x86_64");
        Requires.Program("qemu-img");
        Requires.Program("mkfs.ext4");
        Requires.File("/bin/busybox", "busybox-static");
        if (!Directory.EnumerateFiles("/boot", "vmlinuz-*").Any()) Requires.Missing("a guest kernel in /boot (linux-image-amd64)");
    }

    public static async Task<DefaultImageInfo> ImageAsync()
    {
        await s_lock.WaitAsync();
        try
        {
            return s_image ??= await DefaultImage.BuildAsync(new DefaultImageOptions { CacheDir = CacheDir, ExtraInit = EchoLoop });
        }
        finally { s_lock.Release(); }
    }

    public static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(120);

    /// <summary>Runs a command on the serial console shell and waits for its output (between unique markers).</summary>
    public static async Task<string> ShellAsync(Vm vm, string command, TimeSpan? timeout = null)
    {
        // Right after boot the console shell may be restarting: retype until the command's end marker shows.
        for (var attempt = 0; ; attempt++)
        {
            var id = Guid.NewGuid().ToString("N")[..8];
            var from = vm.ConsoleLogLength;
            // The markers are split in the typed command so the echoed input does not match.
            await vm.SendConsoleAsync($"echo B{id}''X; {command}; echo E{id}''X\n", TimeSpan.FromSeconds(10));
            string log;
            try { log = await vm.WaitForConsoleAsync($"E{id}X", attempt < 3 ? TimeSpan.FromSeconds(20) : timeout ?? TimeSpan.FromSeconds(60), from); }
            catch (TimeoutException) when (attempt < 3) { continue; }
            var start = log.IndexOf($"B{id}X", StringComparison.Ordinal);
            var end = log.IndexOf($"E{id}X", StringComparison.Ordinal);
            return start >= 0 && end > start ? log[(start + id.Length + 2)..end].Replace("\r", "", StringComparison.Ordinal).Trim('\n') : log;
        }
    }

    /// <summary>Writes a line to the agent socket and reads it back (the guest echoes the port).</summary>
    public static async Task<string> AgentEchoAsync(Vm vm, string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await s.ConnectAsync(new UnixDomainSocketEndPoint(vm.AgentSocketPath));
                using var ns = new NetworkStream(s);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await ns.WriteAsync(Encoding.UTF8.GetBytes(text + "\n"), cts.Token);
                var sb = new StringBuilder();
                var buf = new byte[256];
                while (!sb.ToString().Contains('\n'))
                {
                    var n = await ns.ReadAsync(buf, cts.Token);
                    if (n == 0) break;
                    sb.Append(Encoding.UTF8.GetString(buf, 0, n));
                }
                if (sb.ToString().Contains(text, StringComparison.Ordinal)) return sb.ToString().Trim();
            }
            catch (Exception e) when (e is SocketException or IOException or OperationCanceledException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no echo from the guest on {vm.AgentSocketPath}");
            await Task.Delay(300);
        }
    }

    /// <summary>True when some process runs with this state dir on its command line (a stray QEMU).</summary>
    public static bool QemuRunsFor(string stateDir)
    {
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out _)) continue;
            try
            {
                var cmd = File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ');
                if (cmd.Contains("qemu-system", StringComparison.Ordinal) && cmd.Contains(stateDir, StringComparison.Ordinal)) return true;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return false;
    }

    public static void AssertNoRuntimeLeft(string stateDir)
    {
        Assert.False(QemuRunsFor(stateDir), $"a QEMU process for {stateDir} is still running");
        foreach (var f in new[] { StateFiles.Qmp, StateFiles.Agent, StateFiles.Console, StateFiles.Pid })
            Assert.False(Path.Exists(Path.Combine(stateDir, f)), $"{f} was left in {stateDir}");
    }
}

/// <summary>A temp state dir that also kills a VM left running in it.</summary>
public sealed class VmDir : IAsyncDisposable
{
    readonly TempDir _tmp = new("hvm");
    public string Path => _tmp.Path;
    public string Sub(string name) => System.IO.Path.Combine(_tmp.Path, name);

    public async ValueTask DisposeAsync()
    {
        foreach (var cfg in Directory.EnumerateFiles(_tmp.Path, StateFiles.Config, SearchOption.AllDirectories))
        {
            var stateDir = System.IO.Path.GetDirectoryName(cfg)!;
            try
            {
                await using var vm = await Vm.AttachAsync(stateDir, TestImages.Host);
                if (vm.Pid is not null) await vm.KillAsync();
            }
            catch (Exception) { }
            // Last resort, also when the test failed half way: no QEMU may outlive its test.
            var pidFile = System.IO.Path.Combine(stateDir, StateFiles.Pid);
            if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out var pid))
            {
                try
                {
                    var cmd = File.ReadAllText($"/proc/{pid}/cmdline");
                    if (cmd.Contains(stateDir, StringComparison.Ordinal)) System.Diagnostics.Process.GetProcessById(pid).Kill();
                }
                catch (Exception) { }
            }
        }
        _tmp.Dispose();
    }
}

/// <summary>One booted VM shared by the tests that can share it.</summary>
public sealed class SharedVmFixture : IAsyncLifetime
{
    public VmDir Dir { get; } = new();
    public Vm? Vm { get; private set; }
    public Exception? Error { get; private set; }
    public string BootLog { get; private set; } = "";

    public async Task InitializeAsync()
    {
        try
        {
            TestImages.RequireVmHost();
            var image = await TestImages.ImageAsync();
            var c = image.ToConfig("shared");
            c.Hostname = "hullbox";
            var vm = await Vm.CreateAsync(Dir.Sub("shared"), c, TestImages.Host);
            vm.AddDataDisk(32 << 20, DiskFormat.Qcow2);
            await vm.StartAsync();
            Vm = vm;
            BootLog = await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout);
            await TestImages.ShellAsync(vm, "true");
        }
        catch (Exception e) { Error = e; }
    }

    public Vm Get()
    {
        TestImages.RequireVmHost();
        if (Error is not null) throw new InvalidOperationException("the shared VM did not boot: " + Error.Message, Error);
        return Vm!;
    }

    public async Task DisposeAsync()
    {
        if (Vm is not null)
        {
            try { await Vm.KillAsync(); } catch (Exception) { }
        }
        await Dir.DisposeAsync();
    }
}

[CollectionDefinition("shared-vm")]
public sealed class SharedVmCollection : ICollectionFixture<SharedVmFixture>;
