namespace Hull.Containers;

/// <summary>The OCI status of a container (runtime-spec "state"). Strings only at the JSON edge:
/// <see cref="ContainerStatuses.Oci"/>.</summary>
public enum ContainerStatus { Creating, Created, Running, Paused, Stopped }

public static class ContainerStatuses
{
    /// <summary>The runtime-spec word for a status ("creating", "created", "running", "paused", "stopped").</summary>
    public static string Oci(this ContainerStatus s) => s switch
    {
        ContainerStatus.Creating => "creating",
        ContainerStatus.Created => "created",
        ContainerStatus.Running => "running",
        ContainerStatus.Paused => "paused",
        _ => "stopped",
    };

    /// <summary>Has a live init: created, running or paused.</summary>
    public static bool IsLive(this ContainerStatus s) =>
        s is ContainerStatus.Created or ContainerStatus.Running or ContainerStatus.Paused;
}
