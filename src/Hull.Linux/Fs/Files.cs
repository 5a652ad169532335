namespace Hull.Linux;

/// <summary>File-tree helpers shared by hulld and its drivers.</summary>
public static class Files
{
    /// <summary>
    /// Removes a directory tree (or a file); nothing when it does not exist. With rm -rf --one-file-system, never
    /// .NET's recursive delete: a mount left below (an instance's rootfs, a bind-mounted host directory) is skipped,
    /// never emptied. Best effort, as callers remove what a failure left: what rm could not remove stays.
    /// </summary>
    public static void RemoveTree(string path)
    {
        if (!Directory.Exists(path) && !File.Exists(path)) return;
        HostProgram.ExecAsync("rm", ["-rf", "--one-file-system", path], null, CancellationToken.None)
            .GetAwaiter().GetResult();
    }
}
