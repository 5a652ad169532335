namespace Hull.Api;

/// <summary>Where hulld keeps its state and serves its API, for hulld, the SDK and the CLI alike.</summary>
public static class HullPaths
{
    public const string DefaultSocket = "/run/hull/hulld.sock";
    public const string DefaultStateDir = "/var/lib/hull";

    /// <summary>$HULL_SOCKET, else <see cref="DefaultSocket"/>.</summary>
    public static string Socket =>
        Environment.GetEnvironmentVariable("HULL_SOCKET") is { Length: > 0 } s ? s : DefaultSocket;

    /// <summary>$HULL_DIR, else <see cref="DefaultStateDir"/>.</summary>
    public static string StateDir =>
        Environment.GetEnvironmentVariable("HULL_DIR") is { Length: > 0 } d ? d : DefaultStateDir;
}
