namespace Hull.Agent.Protocol;

/// <summary>Something commands can run in: a VM (through its agent) or a container (natively).</summary>
public interface IExecTarget
{
    /// <summary>
    /// Runs a command to completion. <paramref name="stdin"/> (optional) is copied to the process until its end,
    /// then the process sees end of file; stdout and stderr are copied to the given streams (with a tty, everything
    /// goes to <paramref name="stdout"/>). Cancelling kills the process (SIGKILL) and throws.
    /// </summary>
    Task<ExecResult> ExecAsync(ExecRequest request, Stream? stdin, Stream stdout, Stream? stderr,
        CancellationToken ct = default);

    /// <summary>Starts a command and returns at once: resize its terminal, signal it, await its end.</summary>
    Task<IExecProcess> StartExecAsync(ExecRequest request, Stream? stdin, Stream stdout, Stream? stderr,
        CancellationToken ct = default);
}

/// <summary>A running exec.</summary>
public interface IExecProcess : IAsyncDisposable
{
    /// <summary>The process id in the guest (or container).</summary>
    int Pid { get; }
    Task ResizeAsync(ushort rows, ushort cols, CancellationToken ct = default);
    Task SignalAsync(int signal, CancellationToken ct = default);
    /// <summary>Completes when the process has exited and its output has been copied.</summary>
    Task<ExecResult> WaitAsync(CancellationToken ct = default);
}

/// <summary>Something files can be copied into and out of.</summary>
public interface IFileTarget
{
    /// <summary>Writes <paramref name="content"/> (read to its end) to the request's path, atomically (temporary file
    /// then rename).</summary>
    Task<FileStat> PushFileAsync(PushRequest request, Stream content, CancellationToken ct = default);

    /// <summary>Copies a regular file's contents to <paramref name="destination"/>; returns what it was.</summary>
    Task<FileStat> PullFileAsync(string path, Stream destination, CancellationToken ct = default);
}
