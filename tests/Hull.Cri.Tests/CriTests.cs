using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Grpc.Core;
using Hull.Cri.Tests.V1;
using Hull.Oci.Clients.Tests;
using Xunit;
using Xunit.Abstractions;

namespace Hull.Cri.Tests;

/// <summary>
/// Kubernetes' view of Hull: each case drives containerd's CRI plugin with the runtime handler <c>hull</c>
/// (hull-oci under the runc v2 shim) and with <c>runc</c> in the same run, asserts what the kubelet relies on, and
/// asserts that both handlers show the same observable results. The helpers the cases share.
/// </summary>
public abstract class CriCases(CriFixture fixture, ITestOutputHelper output)
{
    protected readonly CriFixture f = fixture;
    protected readonly ITestOutputHelper output = output;
    protected RuntimeService.RuntimeServiceClient Cri => f.Runtime;

    protected static DateTime In(int seconds) => CriFixture.In(seconds);

    /// <summary>Runs the case once per handler (runc first) and asserts hull's observations equal runc's.</summary>
    protected void SameForBothHandlers(Func<string, List<string>> scenario)
    {
        f.Require();
        var seen = CriFixture.Handlers.ToDictionary(h => h, h =>
        {
            try { return scenario(h); }
            catch (Exception e) when (e is RpcException or InvalidOperationException or TimeoutException)
            { throw new InvalidOperationException($"with handler {h}: {e.Message}", e); }
        });
        var runc = seen["runc"];
        var hull = seen["hull"];
        output.WriteLine("observed with both handlers:\n" + string.Join('\n', runc));
        Assert.True(runc.SequenceEqual(hull), "hull and runc differ:\n--- runc\n" + string.Join('\n', runc)
            + "\n--- hull\n" + string.Join('\n', hull));
    }

    protected static ContainerConfig Container(string name, string script, LinuxContainerResources? resources = null,
        bool privileged = false) => new()
    {
        Metadata = new ContainerMetadata { Name = name, Attempt = 0 },
        Image = new ImageSpec { Image = CriFixture.BusyboxImage },
        Command = { "sh", "-c", script },
        LogPath = name + "/0.log",
        Envs = { new KeyValue { Key = "HULL_CASE", Value = name } },
        Labels = { ["container"] = name },
        Linux = new LinuxContainerConfig
        {
            Resources = resources ?? new LinuxContainerResources(),
            SecurityContext = new LinuxContainerSecurityContext
            {
                NamespaceOptions = CriFixture.PodNamespaces(), Privileged = privileged,
            },
        },
    };

    protected string Create(string pod, PodSandboxConfig podConfig, ContainerConfig config) =>
        Cri.CreateContainer(
            new CreateContainerRequest { PodSandboxId = pod, Config = config, SandboxConfig = podConfig },
            deadline: In(60)).ContainerId;

    protected void Start(string id) =>
        Cri.StartContainer(new StartContainerRequest { ContainerId = id }, deadline: In(60));

    protected ContainerStatus Status(string id) =>
        Cri.ContainerStatus(new ContainerStatusRequest { ContainerId = id }, deadline: In(30)).Status;

    protected PodSandboxStatusResponse PodStatus(string pod, bool verbose = false) =>
        Cri.PodSandboxStatus(new PodSandboxStatusRequest { PodSandboxId = pod, Verbose = verbose }, deadline: In(30));

    protected void StopPod(string pod) =>
        Cri.StopPodSandbox(new StopPodSandboxRequest { PodSandboxId = pod }, deadline: In(60));

    protected void RemovePod(string pod) =>
        Cri.RemovePodSandbox(new RemovePodSandboxRequest { PodSandboxId = pod }, deadline: In(60));

    protected void Stop(string id, int timeout) =>
        Cri.StopContainer(new StopContainerRequest { ContainerId = id, Timeout = timeout }, deadline: In(60));

    protected void Remove(string id) =>
        Cri.RemoveContainer(new RemoveContainerRequest { ContainerId = id }, deadline: In(60));

    protected ExecSyncResponse Exec(string id, params string[] cmd)
    {
        var request = new ExecSyncRequest { ContainerId = id, Timeout = 30 };
        request.Cmd.AddRange(cmd);
        return Cri.ExecSync(request, deadline: In(60));
    }

    protected static StatusCode CodeOf(Action call)
    {
        try { call(); return StatusCode.OK; }
        catch (RpcException e) { return e.StatusCode; }
    }

    protected static string Text(Google.Protobuf.ByteString b) => b.ToStringUtf8().Trim().Replace("\n", " | ");

    /// <summary>Whether the handler's runtime still lists the container (in the state dir the shim gave it).</summary>
    protected bool RuntimeStateLeft(string handler, string id)
    {
        var root = Path.Combine(f.RuntimeRoot(handler), CriFixture.Namespace);
        if (!Directory.Exists(root)) return false;
        var list = Cmd.Run(f.RuntimeBinary(handler), ["--root", root, "list", "-q"]);
        return list.Stdout.Contains(id, StringComparison.Ordinal);
    }

    protected static string Read(string dir, string file)
    {
        var p = Path.Combine(dir, file);
        return File.Exists(p) ? File.ReadAllText(p).Trim() : "(no " + p + ")";
    }
}

/// <summary>The pod, container and pod-stop cases, and the per-pod time of each handler.</summary>
public sealed partial class CriTests(CriFixture fixture, ITestOutputHelper output)
    : CriCases(fixture, output), IClassFixture<CriFixture>
{
    [SkippableFact]
    public void Pod_sandbox_runs_reports_its_status_stops_and_is_removed()
    {
        SameForBothHandlers(handler =>
        {
            var seen = new List<string>();
            string Generic(string s) => s.Replace(handler, "H");
            var pod = f.RunPod(f.PodConfig("pod-" + handler), handler);
            var verbose = PodStatus(pod, verbose: true);
            var s = verbose.Status;
            Assert.Equal(pod, s.Id);
            Assert.Equal(handler, s.RuntimeHandler);
            Assert.True(s.CreatedAt > 0);
            seen.Add($"state={s.State} name={Generic(s.Metadata.Name)} namespace={s.Metadata.Namespace}");
            seen.Add("labels: " + string.Join(',', s.Labels.Where(l => l.Key == "app").Select(l => Generic(l.Value))));
            seen.Add("annotations: " + string.Join(',', s.Annotations.Select(a => a.Key + "=" + Generic(a.Value))));
            seen.Add("address in the pod subnet: " + s.Network.Ip.StartsWith("10.213.77.", StringComparison.Ordinal));
            // the sandbox's process is the pause image's catatonit, in a cgroup under the pod's parent
            using var info = JsonDocument.Parse(verbose.Info["info"]);
            var pid = info.RootElement.GetProperty("pid").GetInt32();
            // (the runtime's start may return just before its init has executed the program)
            string Comm() => File.ReadAllText($"/proc/{pid}/comm").Trim();
            try { CriFixture.WaitFor("the pause process to be catatonit", () => Comm() == "catatonit", 5); }
            catch (TimeoutException) { }
            seen.Add("pause process: " + Comm());
            seen.Add("pause cgroup under the pod's parent: " + File.ReadAllLines($"/proc/{pid}/cgroup")
                .Any(l => l.Contains(":memory:" + f.CgroupParent + "/", StringComparison.Ordinal)));
            var netns = CriFixture.NetnsPath(info.RootElement)!;
            seen.Add("pod network namespace exists: " + File.Exists(netns));

            StopPod(pod);
            s = PodStatus(pod).Status;
            seen.Add($"after stop: state={s.State} pause alive={Directory.Exists($"/proc/{pid}")} "
                + $"netns exists={File.Exists(netns)}");
            seen.Add("stop again: " + CodeOf(() => StopPod(pod)));
            RemovePod(pod);
            seen.Add("status after remove: " + CodeOf(() => PodStatus(pod)));
            seen.Add("remove again: " + CodeOf(() => RemovePod(pod)));
            seen.Add("runtime state left: " + RuntimeStateLeft(handler, pod));
            return seen;
        });
    }

    [GeneratedRegex(@"^\S+ (stdout|stderr) (F|P) ")]
    private static partial Regex CriLogPrefix();

    [SkippableFact]
    public void Container_runs_execs_logs_reports_stats_takes_new_resources_stops_and_is_removed()
    {
        SameForBothHandlers(handler =>
        {
            var seen = new List<string>();
            var podConfig = f.PodConfig("work-" + handler);
            var pod = f.RunPod(podConfig, handler);
            try
            {
                var config = Container("work", "echo out-line; echo err-line >&2; exec sleep 1000",
                    new LinuxContainerResources { MemoryLimitInBytes = 128 << 20, CpuShares = 512 });
                var id = Create(pod, podConfig, config);
                var s = Status(id);
                seen.Add($"created: state={s.State} started={s.StartedAt > 0} image={s.Image.Image}");
                Start(id);
                s = Status(id);
                seen.Add($"started: state={s.State} started={s.StartedAt > 0} finished={s.FinishedAt > 0}");

                var exec = Exec(id, "sh", "-c", "echo exec-out; echo exec-err >&2; exit 3");
                seen.Add($"exec: stdout={Text(exec.Stdout)} stderr={Text(exec.Stderr)} exit={exec.ExitCode}");
                exec = Exec(id, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; echo $HULL_CASE");
                seen.Add($"exec sees: {Text(exec.Stdout).Replace(handler, "H")} exit={exec.ExitCode}");
                // runc fails the call itself when it cannot start the process
                seen.Add("exec of a missing program: " + CodeOf(() => Exec(id, "/no/such/program")));

                // containerd writes the container's stdout and stderr to the log file, in the CRI's format
                var log = Path.Combine(podConfig.LogDirectory, config.LogPath);
                List<string> lines = [];
                CriFixture.WaitFor("two lines in " + log,
                    () => File.Exists(log) && (lines = [.. File.ReadAllLines(log)]).Count >= 2);
                Assert.All(lines, l => Assert.Matches(CriLogPrefix(), l));
                seen.Add("log: " + string.Join(" | ", lines.Select(l => l[(l.IndexOf(' ') + 1)..]).Order()));

                var stats = Cri.ContainerStats(new ContainerStatsRequest { ContainerId = id }, deadline: In(30)).Stats;
                seen.Add($"stats: id={stats.Attributes.Id == id} name={stats.Attributes.Metadata.Name} "
                    + $"cpu={stats.Cpu?.UsageCoreNanoSeconds?.Value > 0} memory={stats.Memory?.UsageBytes?.Value > 0} "
                    + $"working set={stats.Memory?.WorkingSetBytes is not null} "
                    + $"layer={stats.WritableLayer?.UsedBytes is not null}");

                var memory = $"/sys/fs/cgroup/memory{f.CgroupParent}/{id}";
                var cpu = $"/sys/fs/cgroup/cpu{f.CgroupParent}/{id}";
                string Cgroup() => $"memory={Read(memory, "memory.limit_in_bytes")} shares={Read(cpu, "cpu.shares")} "
                    + $"quota={Read(cpu, "cpu.cfs_quota_us")}";
                seen.Add("cgroup at create: " + Cgroup());
                Cri.UpdateContainerResources(new UpdateContainerResourcesRequest
                {
                    ContainerId = id,
                    Linux = new LinuxContainerResources
                    {
                        MemoryLimitInBytes = 64 << 20, CpuShares = 256, CpuPeriod = 100_000, CpuQuota = 50_000,
                    },
                }, deadline: In(30));
                seen.Add("cgroup after update: " + Cgroup());

                // sleep, the PID namespace's init, ignores SIGTERM: StopContainer kills it after the grace period
                Stop(id, timeout: 1);
                s = Status(id);
                seen.Add($"stopped: state={s.State} exit={s.ExitCode} reason={s.Reason} finished={s.FinishedAt > 0}");
                seen.Add("stop again: " + CodeOf(() => Stop(id, timeout: 1)));
                Remove(id);
                seen.Add("status after remove: " + CodeOf(() => Status(id)));
                seen.Add("remove again: " + CodeOf(() => Remove(id)));
                seen.Add($"after remove: cgroups left={f.CgroupsLeft(id).Count} "
                    + $"runtime state left={RuntimeStateLeft(handler, id)} log kept={File.Exists(log)}");
            }
            finally { f.StopAndRemovePod(pod); }
            return seen;
        });
    }

    /// <summary>
    /// A container that exits at once, then StopPodSandbox at once: the shim may then ask the runtime to kill a
    /// container that is already gone, and the stop succeeds only if the runtime says "container not running"
    /// (runc's words, which the shim takes as "already finished"). This failed about 3 times in 30 with hull when
    /// hull-oci said "it is stopped".
    /// </summary>
    [SkippableFact]
    public void Container_that_exits_at_once_then_StopPodSandbox_succeeds_every_time()
    {
        SameForBothHandlers(handler =>
        {
            var rounds = handler == "hull" ? 30 : 10;
            var failures = new List<string>();
            for (var i = 0; i < rounds; i++)
            {
                var podConfig = f.PodConfig($"quick-{handler}-{i}");
                var pod = f.RunPod(podConfig, handler);
                try
                {
                    var id = Create(pod, podConfig, Container("quick", "exit 0"));
                    Start(id);
                    try { StopPod(pod); }
                    catch (RpcException e) when (e.Status.Detail.Contains("ttrpc: closed", StringComparison.Ordinal))
                    {
                        // containerd 1.6's shim can drop the connection in this race, with runc as with hull; the
                        // kubelet calls StopPodSandbox again, and so does the test (once)
                        output.WriteLine($"{handler} round {i}: StopPodSandbox retried after: {e.Status.Detail}");
                        try { StopPod(pod); }
                        catch (RpcException again)
                        {
                            failures.Add($"round {i}: StopPodSandbox, twice: {again.Status.Detail}");
                            continue;
                        }
                    }
                    catch (RpcException e) { failures.Add($"round {i}: StopPodSandbox: {e.Status.Detail}"); continue; }
                    var s = Status(id);
                    // 137: the stop may kill the container before its shell has exited by itself
                    if (s.State != ContainerState.ContainerExited || s.ExitCode is not (0 or 137))
                        failures.Add($"round {i}: container state {s.State}, exit {s.ExitCode}");
                }
                finally
                {
                    try { f.StopAndRemovePod(pod); }
                    catch (RpcException e) { failures.Add($"round {i}: cleanup: {e.Status.Detail}"); }
                }
            }
            var failed = failures.Select(l => l.Split(':')[0]).Distinct().Count();
            Assert.True(failures.Count == 0,
                $"{handler}: {failed} of {rounds} rounds failed; the first:\n" + string.Join('\n', failures.Take(3)));
            return ["every round: StopPodSandbox succeeded, the container exited, the pod was removed"];
        });
    }

    /// <summary>Per-pod time (RunPodSandbox; then StopPodSandbox + RemovePodSandbox) of each handler, logged.</summary>
    [SkippableFact]
    public void Pod_sandbox_times_are_logged()
    {
        f.Require();
        const int rounds = 10;
        var run = CriFixture.Handlers.ToDictionary(h => h, _ => new List<double>());
        var teardown = CriFixture.Handlers.ToDictionary(h => h, _ => new List<double>());
        for (var i = 0; i < rounds; i++)
            foreach (var handler in CriFixture.Handlers) // interleaved, so the host's load falls on both alike
            {
                var config = f.PodConfig($"time-{handler}-{i}");
                var sw = Stopwatch.StartNew();
                var pod = Cri.RunPodSandbox(new RunPodSandboxRequest { Config = config, RuntimeHandler = handler },
                    deadline: In(60)).PodSandboxId;
                run[handler].Add(sw.Elapsed.TotalMilliseconds);
                sw.Restart();
                f.StopAndRemovePod(pod);
                teardown[handler].Add(sw.Elapsed.TotalMilliseconds);
            }
        static double Median(List<double> l) => l.Order().ElementAt(l.Count / 2);
        foreach (var handler in CriFixture.Handlers)
        {
            var line = $"cri pod sandbox time, handler {handler}: RunPodSandbox median {Median(run[handler]):F0} ms, "
                + $"StopPodSandbox+RemovePodSandbox median {Median(teardown[handler]):F0} ms ({rounds} pods)";
            output.WriteLine(line);
            Console.WriteLine(line);
        }
    }
}
