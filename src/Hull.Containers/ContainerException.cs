namespace Hull.Containers;

/// <summary>An engine error with a message meant for the user: what failed, on what, and what to do.</summary>
public class ContainerException(string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The process exit status the CLI should use.</summary>
    public int ExitCode { get; init; } = 1;
}

public sealed class ContainerNotFoundException(string id)
    : ContainerException($"container \"{id}\" does not exist (hull-oci list shows the containers under this --root)");

public sealed class InvalidSpecException(string message) : ContainerException(message);
