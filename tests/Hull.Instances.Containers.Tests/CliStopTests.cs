using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>hull stop says when it had to kill: an instance that ignores its stop signal is killed after the timeout,
/// and the user is told, rather than a silent success.</summary>
public sealed class CliStopTests
{
    [SkippableFact]
    public async Task A_stop_that_had_to_kill_says_so()
    {
        using var d = new ContainerDaemon();
        // sleep as PID 1 has no handler for SIGTERM, so the kernel drops the signal.
        Assert.Equal(0, d.Cli("launch", "busybox", "deaf", "--", "sleep", "1000").Code);
        Assert.Equal(0, d.Cli("launch", "busybox", "polite").Code);
        var stop = d.Cli("stop", "deaf", "--timeout", "1");
        Assert.Equal(0, stop.Code);
        Assert.Contains("hull: deaf did not stop within 1 s of being asked", stop.Err);
        Assert.Equal(137, (await d.Client.GetInstanceAsync("deaf")).LastExitCode);
        var clean = d.Cli("stop", "polite");
        Assert.Equal(0, clean.Code);
        Assert.DoesNotContain("did not stop", clean.Err);
    }
}
