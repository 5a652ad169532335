using System.Security.Cryptography;
using Hull.Api;
using Hull.TestSupport;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// hull exec against a real attacker (<see cref="ExeAttacker"/>) as the container's process: it turns /bin/echo into
/// "#!/proc/self/exe" and attacks every new process of the container through /proc/PID/exe and /proc/PID/mem.
/// Neither hulld's nor the runtime's binary may be reached, nor hulld's or the monitor's memory.
/// </summary>
public sealed class SealedExecTests
{
    static string Cmd(params string[] args) => "[" + string.Join(",", args.Select(a => "\"" + a + "\"")) + "]";
    static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));
    static byte[] Environ(int pid) => File.ReadAllBytes($"/proc/{pid}/environ");

    [SkippableFact]
    public async Task Hull_exec_exposes_no_host_binary_and_no_daemon_memory_to_the_container()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        using var tmp = new TempDir();
        var attacker = Path.Combine(tmp.Path, "attack");
        ExeAttacker.Build(attacker);
        await c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "a1", Image = "busybox", Start = false,
            Config = { ["app.command"] = Cmd("/attack", "/tmp/attack.log", "/tmp/stop", "/bin/echo") },
        });
        await c.PushFileAsync("a1", "/attack", await File.ReadAllBytesAsync(attacker), 0b111_101_101);
        // The libraries of the host binaries, as a distribution's image has them: a "#!/proc/self/exe" exec then
        // starts the exec'ing process's own binary in the container.
        var binaries = new[] { ContainerDaemon.HostExe, ContainerDaemon.InitBinary };
        foreach (var lib in binaries.SelectMany(ExeAttacker.SharedLibraries).Distinct())
            await c.PushFileAsync("a1", lib, await File.ReadAllBytesAsync(lib), 0b111_101_101);
        await c.StartAsync("a1");
        var pid = (await c.GetInstanceAsync("a1")).Pid!.Value;
        var log = $"/proc/{pid}/root/tmp/attack.log";
        await Wait.UntilAsync(() => Task.FromResult(File.Exists(log) && File.ReadAllText(log).Contains("READY")),
            "the attacker's start");

        var hashes = binaries.Select(Hash).ToList();
        var daemons = new[] { d.Pid, int.Parse(File.ReadAllText(Path.Combine(d.StateDir, "monitor.pid")).Trim()) };
        var environs = daemons.Select(Environ).ToList();

        for (var i = 0; i < 5; i++) await c.ExecAsync("a1", "echo", "hi");
        await Task.Delay(1500); // the attacker retries the exe fds it holds until ETXTBSY clears
        await c.ExecAsync("a1", "touch", "/tmp/stop");
        // The attacker is the container's process: the container stops with it; its log is read from the instance.
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("a1")).State != InstanceStates.Running,
            "the attacker's stop");
        log = Path.Combine(tmp.Path, "attack.log");
        await File.WriteAllBytesAsync(log, await c.ReadFileAsync("a1", "/tmp/attack.log"));
        var text = File.ReadAllText(log);
        Assert.True(ExeAttacker.ExeWrites(log).Count == 0, "a host binary was opened for writing:\n" + text);
        Assert.True(ExeAttacker.MemWrites(log).Count == 0, "a host process's memory was opened for writing:\n" + text);
        foreach (var b in binaries) Assert.DoesNotContain(ExeAttacker.FileId(b), ExeAttacker.ExeOpened(log));
        Assert.Equal(hashes, binaries.Select(Hash).ToList());
        for (var i = 0; i < daemons.Length; i++) Assert.Equal(environs[i], Environ(daemons[i]));
        // The attack ran: the exec'ing process's image started in the container (as "#!/proc/self/exe"), sealed.
        Assert.Contains("EXE-OPEN", text);
    }
}
