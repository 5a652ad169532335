using Hull.Cri.Tests.V1;
using Xunit;
using Xunit.Abstractions;

namespace Hull.Cri.Tests;

/// <summary>
/// A bidirectional (rshared) volume, with a containerd of its own: a runtime that fails half-way through such a
/// container can leave mounts behind in containerd's mount namespace, which must not reach the other cases.
/// </summary>
public sealed class MountPropagationTests(CriFixture fixture, ITestOutputHelper output)
    : CriCases(fixture, output), IClassFixture<CriFixture>
{
    /// <summary>
    /// PROPAGATION_BIDIRECTIONAL: a mount the container makes below the volume appears on the host (here: in
    /// containerd's mount namespace, whose mounts are shared as on a systemd host), and a mount the host makes below it
    /// appears in the container.
    /// </summary>
    [SkippableFact]
    public void Bidirectional_volume_propagates_mounts_both_ways()
    {
        SameForBothHandlers(handler =>
        {
            var seen = new List<string>();
            var shared = Path.Combine(f.Dir.Path, "shared-" + handler);
            Directory.CreateDirectory(shared);
            MountNsOk("mount", "--bind", shared, shared);
            MountNsOk("mount", "--make-rshared", shared);
            var podConfig = f.PodConfig("prop-" + handler, privileged: true);
            var pod = f.RunPod(podConfig, handler);
            try
            {
                var config = Container("prop", "mkdir -p /mnt/vol/from-container && "
                    + "mount -t tmpfs from-container /mnt/vol/from-container && echo ok > /mnt/vol/from-container/f && "
                    + "exec sleep 1000", privileged: true);
                config.Mounts.Add(new Mount
                {
                    ContainerPath = "/mnt/vol", HostPath = shared,
                    Propagation = MountPropagation.PropagationBidirectional,
                });
                var id = Create(pod, podConfig, config);
                Start(id);
                var fromContainer = f.InMountNs(Path.Combine(shared, "from-container", "f"));
                try { CriFixture.WaitFor("the container's mount on the host", () => File.Exists(fromContainer), 10); }
                catch (TimeoutException) { }
                seen.Add("the host sees the container's mount: " + File.Exists(fromContainer));

                var fromHost = Path.Combine(shared, "from-host");
                Directory.CreateDirectory(fromHost);
                MountNsOk("mount", "-t", "tmpfs", "from-host", fromHost);
                File.WriteAllText(f.InMountNs(Path.Combine(fromHost, "f")), "ok\n");
                var exec = Exec(id, "cat", "/mnt/vol/from-host/f");
                seen.Add($"the container sees the host's mount: {Text(exec.Stdout)} exit={exec.ExitCode}");
                Stop(id, timeout: 0);
                Remove(id);
            }
            finally
            {
                f.StopAndRemovePod(pod);
                f.RunInMountNs("umount", "--recursive", "--lazy", shared);
            }
            return seen;
        });
    }

    void MountNsOk(params string[] command)
    {
        var r = f.RunInMountNs(command);
        Assert.True(r.ExitCode == 0, r.ToString());
    }
}
