using System.Diagnostics;
using System.Text.Json.Nodes;
using Hull.TestSupport;
using Hull.Vm;
using Hull.Vm.Qmp;
using Xunit;

namespace Hull.Vm.Tests;

public sealed class QmpClientTests
{
    /// <summary>A bare QEMU (no machine) with a QMP socket; killed at dispose.</summary>
    sealed class BareQemu : IDisposable
    {
        public readonly TempDir Dir = new("hqmp");
        public readonly Process Process;
        public string Socket => Path.Combine(Dir.Path, "qmp.sock");
        public string Log => Path.Combine(Dir.Path, "qemu.log");

        public BareQemu()
        {
            var psi = new ProcessStartInfo(Requires.Program("qemu-system-x86_64"))
            {
                RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true,
                UseShellExecute = false,
            };
            foreach (var a in new[] { "-M", "none", "-nodefaults", "-display", "none", "-qmp",
                $"unix:{Socket},server=on,wait=off" })
                psi.ArgumentList.Add(a);
            Process = Process.Start(psi)!;
            Process.ErrorDataReceived += (_, e) => { if (e.Data is not null) File.AppendAllText(Log, e.Data + "\n"); };
            Process.BeginErrorReadLine();
            var sw = Stopwatch.StartNew();
            while (!File.Exists(Socket) && !Path.Exists(Socket)
                && sw.Elapsed < TimeSpan.FromSeconds(20)) Thread.Sleep(20);
        }

        public void Dispose()
        {
            try { if (!Process.HasExited) { Process.Kill(); Process.WaitForExit(); } } catch (
                InvalidOperationException) { }
            Process.Dispose();
            Dir.Dispose();
        }
    }

    [SkippableFact]
    public async Task Negotiates_runs_commands_concurrently_and_reports_errors()
    {
        Requires.Program("qemu-system-x86_64");
        using var q = new BareQemu();
        await using var c = await QmpClient.ConnectAsync(q.Socket);
        Assert.Matches(@"^\d+\.\d+\.\d+$", c.QemuVersion);
        var tasks = Enumerable.Range(0, 20).Select(i =>
            i % 2 == 0 ? c.ExecuteAsync("query-version") : c.ExecuteAsync("query-name")).ToArray();
        var results = await Task.WhenAll(tasks);
        for (var i = 0; i < results.Length; i += 2) Assert.NotNull(results[i]?["qemu"]?["major"]);
        var e = await Assert.ThrowsAsync<QmpException>(() => c.ExecuteAsync("no-such-command"));
        Assert.Equal("CommandNotFound", e.ErrorClass);
        var e2 = await Assert.ThrowsAsync<QmpException>(() =>
            c.ExecuteAsync("query-cpu-model-expansion", new JsonObject { ["type"] = "bogus" }));
        Assert.Contains("bogus", e2.Message);
    }

    [SkippableFact]
    public async Task Delivers_events_and_fails_pending_commands_with_stderr_when_QEMU_dies()
    {
        Requires.Program("qemu-system-x86_64");
        using var q = new BareQemu();
        File.WriteAllText(q.Log, "qemu-system-x86_64: something the test planted\n");
        await using var c = await QmpClient.ConnectAsync(q.Socket, diagnostics: () => File.ReadAllText(q.Log));
        var events = new List<string>();
        using var sub = c.Subscribe(ev => { lock (events) events.Add(ev.Name); });
        using var stop = c.Expect("STOP");
        await c.ExecuteAsync("stop");
        var ev = await stop.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal("STOP", ev.Name);
        using (var resume = c.Expect("RESUME"))
        {
            await c.ExecuteAsync("cont");
            await resume.WaitAsync(TimeSpan.FromSeconds(10));
        }
        lock (events) Assert.Contains("RESUME", events);
        await Assert.ThrowsAsync<TimeoutException>(() =>
            c.WaitForEventAsync("GUEST_PANICKED", null, TimeSpan.FromMilliseconds(200)));

        q.Process.Kill();
        await c.Closed.WaitAsync(TimeSpan.FromSeconds(10));
        var gone = await Assert.ThrowsAsync<QemuGoneException>(() => c.ExecuteAsync("query-status"));
        Assert.Contains("something the test planted", gone.Message);
    }

    [SkippableFact]
    public async Task Connect_to_a_missing_socket_is_a_clear_error()
    {
        using var d = new TempDir("hqmp");
        var e = await Assert.ThrowsAsync<QemuGoneException>(() =>
            QmpClient.ConnectAsync(Path.Combine(d.Path, "none.sock"), TimeSpan.FromSeconds(2)));
        Assert.Contains("none.sock", e.Message);
    }
}

public sealed class AccelTests
{
    [SkippableFact]
    public void The_probe_guest_passes_under_TCG()
    {
        var qemu = Requires.Program("qemu-system-x86_64");
        using var d = new TempDir("hacc");
        var (ok, detail) = AccelProbe.RunProbe(qemu, d.Path, "tcg", "max", TimeSpan.FromSeconds(60));
        Assert.True(ok, detail);
        Assert.Empty(Directory.GetFiles(d.Path));
    }

    [SkippableFact]
    public void Auto_resolves_by_probe_and_caches_the_verdict_per_host()
    {
        var qemu = Requires.Program("qemu-system-x86_64");
        using var d = new TempDir("hacc");
        var warnings = new List<string>();
        var old = AccelProbe.Warn;
        AccelProbe.Warn = warnings.Add;
        try
        {
            var v = AccelProbe.Resolve(Accel.Auto, d.Path, qemu);
            Assert.True(File.Exists(Path.Combine(d.Path, "accel.json")));
            Assert.Equal(AccelProbe.HostKey(), v.HostKey);
            Assert.False(string.IsNullOrEmpty(v.Reason));
            if (v.Accel == Accel.Tcg)
            {
                // One warning line that says why.
                Assert.Single(warnings);
                Assert.Contains("TCG", warnings[0]);
                Assert.Contains(v.Reason, warnings[0]);
            }
            else Assert.Empty(warnings);
            // The second resolve is served from the cache: same verdict, no new warning.
            var again = AccelProbe.Resolve(Accel.Auto, d.Path, qemu);
            Assert.Equal(v.Accel, again.Accel);
            Assert.True(warnings.Count <= 1);
            Assert.Equal(Accel.Tcg, AccelProbe.Resolve(Accel.Tcg, d.Path, qemu).Accel);
        }
        finally { AccelProbe.Warn = old; }
    }
}
