using System.Net.Sockets;
using System.Text;
using Hull.Agent.Protocol;
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

    /// <summary>The NativeAOT guest agent the test image carries: HULL_AGENT, else out/bin/hull-agent (make
    /// agent).</summary>
    public static string AgentBinary =>
        Environment.GetEnvironmentVariable("HULL_AGENT") is { Length: > 0 } p ? p
            : Path.Combine(Repo.Bin, "hull-agent");

    static readonly SemaphoreSlim s_lock = new(1, 1);
    static DefaultImageInfo? s_image;

    public static void RequireVmHost()
    {
        Requires.Root();
        Requires.Program("qemu-system-x86_64");
        Requires.Program("qemu-img");
        Requires.Program("mkfs.ext4");
        Requires.File("/bin/busybox", "busybox-static");
        if (!Directory.EnumerateFiles("/boot", "vmlinuz-*").Any()) Requires.Missing(
            "a guest kernel in /boot (linux-image-amd64)");
        Requires.File(AgentBinary, "the NativeAOT guest agent: run make agent (or set HULL_AGENT)");
    }

    public static async Task<DefaultImageInfo> ImageAsync()
    {
        await s_lock.WaitAsync();
        try
        {
            return s_image ??= await DefaultImage.BuildAsync(
                new DefaultImageOptions { CacheDir = CacheDir, AgentBinary = AgentBinary });
        }
        finally { s_lock.Release(); }
    }

    public static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(120);

    /// <summary>
    /// Runs a command on the serial console shell and waits for its output (between unique markers). Typed once:
    /// the image opens the serial port before it prints the ready marker, so nothing typed after it is lost.
    /// </summary>
    public static async Task<string> ShellAsync(Vm vm, string command, TimeSpan? timeout = null)
    {
        var id = Guid.NewGuid().ToString("N")[..8];
        var from = vm.ConsoleLogLength;
        // The markers are split in the typed command so the echoed input does not match.
        await vm.SendConsoleAsync($"echo B{id}''X; {command}; echo E{id}''X\n", TimeSpan.FromSeconds(10));
        var log = await vm.WaitForConsoleAsync($"E{id}X", timeout ?? TimeSpan.FromSeconds(60), from);
        var start = log.IndexOf($"B{id}X", StringComparison.Ordinal);
        var end = log.IndexOf($"E{id}X", StringComparison.Ordinal);
        return start >= 0 && end > start ? log[(start + id.Length + 2)..end].Replace("\r", "",
            StringComparison.Ordinal).Trim('\n') : log;
    }

    public static readonly TimeSpan AgentTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Connects Hull's agent client to the VM's agent channel and waits for the agent's Ready.</summary>
    public static async Task<AgentClient> AgentAsync(Vm vm)
    {
        var a = await AgentClient.ConnectUnixAsync(vm.AgentSocketPath);
        try
        {
            await a.WaitReadyAsync(AgentTimeout);
            return a;
        }
        catch
        {
            await a.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs a command through the agent; returns (exit code, stdout, stderr).</summary>
    public static async Task<(int Code, string Out, string Err)> ExecAsync(AgentClient a, params string[] argv)
    {
        var o = new MemoryStream();
        var e = new MemoryStream();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var r = await a.ExecAsync(new ExecRequest { Argv = [.. argv] }, null, o, e, cts.Token);
        return (r.ExitCode, Encoding.UTF8.GetString(o.ToArray()), Encoding.UTF8.GetString(e.ToArray()));
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
                if (cmd.Contains("qemu-system", StringComparison.Ordinal)
                    && cmd.Contains(stateDir, StringComparison.Ordinal)) return true;
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
                    if (cmd.Contains(stateDir, StringComparison.Ordinal)) System.Diagnostics.Process.GetProcessById(
                        pid).Kill();
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
    public string FirstCommand { get; private set; } = "";
    AgentClient? _agent;

    /// <summary>The shared VM's agent connection (one at a time: QEMU serves one client on the channel).</summary>
    public async Task<AgentClient> AgentAsync()
    {
        Get();
        return _agent ??= await TestImages.AgentAsync(Vm!);
    }

    /// <summary>Drops the agent connection and opens a new one (its Hello resyncs the channel).</summary>
    public async Task<AgentClient> ReconnectAgentAsync()
    {
        if (_agent is not null) await _agent.DisposeAsync();
        _agent = null;
        return await AgentAsync();
    }

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
            // Typed the moment the marker shows: the console must not lose it.
            FirstCommand = await TestImages.ShellAsync(vm, "echo first-$((20+22))");
        }
        catch (Exception e) { Error = e; }
    }

    public Vm Get()
    {
        TestImages.RequireVmHost();
        if (Error is not null) throw new InvalidOperationException("the shared VM did not boot: " + Error.Message,
            Error);
        return Vm!;
    }

    public async Task DisposeAsync()
    {
        if (_agent is not null) await _agent.DisposeAsync();
        if (Vm is not null)
        {
            try { await Vm.KillAsync(); } catch (Exception) { }
        }
        await Dir.DisposeAsync();
    }
}

[CollectionDefinition("shared-vm")]
public sealed class SharedVmCollection : ICollectionFixture<SharedVmFixture>;
