using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Hull.Linux;

/// <summary>A helper program failed: the message names it, its exit code and the first lines of its stderr.</summary>
public sealed class HostProgramException(string message, string program, int? exitCode) : Exception(message)
{
    public string Program { get; } = program;
    /// <summary>The exit code, or null when it could not be started or did not finish in time.</summary>
    public int? ExitCode { get; } = exitCode;
}

/// <summary>How to run a helper program (see <see cref="HostProgram"/>); every field is optional.</summary>
public sealed class HostProgramOptions
{
    /// <summary>What the run is for ("packing the host image"): the start of every error message.</summary>
    public string? What;
    /// <summary>Killed (the whole process tree) after this long; null waits for ever.</summary>
    public TimeSpan? Timeout;
    /// <summary>Copied to the program's stdin, which is then closed; null closes stdin at once.</summary>
    public Stream? Stdin;
    /// <summary>The program's stdout is copied here instead of being captured.</summary>
    public Stream? Stdout;
    /// <summary>Reads the program's stdout pipe itself (a decompressor's output); instead of capturing it.</summary>
    public Func<Stream, Task>? ReadStdout;
    /// <summary>A stderr line for which this returns true ends the run early: the program is killed and the run
    /// returns what it has (the caller looks at <see cref="HostProgramResult.Stopped"/>).</summary>
    public Func<string, bool>? StopOnStderr;
    /// <summary>The program shares this process's terminal (stdin, stdout and stderr): an editor.</summary>
    public bool Interactive;
    /// <summary>The program reads this process's stdin (stty asks the terminal there); its output is
    /// captured.</summary>
    public bool InheritStdin;
    /// <summary>Builds the exception thrown for a failure from its message (the caller's own exception type);
    /// null throws <see cref="HostProgramException"/>.</summary>
    public Func<HostProgramException, Exception>? Error;
}

/// <summary>How a helper program ended.</summary>
public sealed record HostProgramResult(int ExitCode, string Stdout, string Stderr, bool TimedOut, bool Stopped);

/// <summary>
/// The one way Hull runs a helper program (tar, qemu-img, rm, a decompressor...): an argument array (never a shell
/// command line), an optional timeout, cancellation that kills the program, stdout captured or streamed and stderr
/// captured for the error message, which names the program and its exit code.
/// </summary>
public static class HostProgram
{
    /// <summary>Runs a program to completion and returns its stdout; a non-zero exit, a timeout or a failure to
    /// start throws (see <see cref="HostProgramOptions.Error"/>).</summary>
    public static async Task<string> RunAsync(string program, IEnumerable<string> args, HostProgramOptions? options,
        CancellationToken ct)
    {
        var o = options ?? new HostProgramOptions();
        var argv = args.ToList();
        var r = await ExecAsync(program, argv, o, ct);
        if (r.TimedOut)
            throw Fail(o, program, null, $"{Name(program, argv)} did not finish in {Seconds(o.Timeout!.Value)}");
        if (r.ExitCode != 0)
            throw Fail(o, program, r.ExitCode, $"{Name(program, argv)} failed (exit {r.ExitCode})" +
                (Detail(r) is { Length: > 0 } d ? ": " + d : ""));
        return r.Stdout;
    }

    /// <summary><see cref="RunAsync"/> for synchronous callers.</summary>
    public static string Run(string program, IEnumerable<string> args, HostProgramOptions? options = null) =>
        RunAsync(program, args, options, CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Runs a program to completion and returns how it ended, whatever its exit code; only a failure to
    /// start throws. Cancelling kills it and throws <see cref="OperationCanceledException"/>.</summary>
    public static async Task<HostProgramResult> ExecAsync(string program, IEnumerable<string> args,
        HostProgramOptions? options, CancellationToken ct)
    {
        var o = options ?? new HostProgramOptions();
        var argv = args.ToList();
        var capture = !o.Interactive && o.Stdout is null && o.ReadStdout is null;
        var psi = new ProcessStartInfo(program)
        {
            UseShellExecute = false,
            RedirectStandardInput = !o.Interactive && !o.InheritStdin,
            RedirectStandardOutput = !o.Interactive,
            RedirectStandardError = !o.Interactive,
        };
        foreach (var a in argv) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi) ?? throw new InvalidOperationException("no process"); }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            throw Fail(o, program, null, $"{Path.GetFileName(program)} cannot be run ({e.Message}): is it installed?");
        }
        using (p)
        {
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            if (o.Timeout is { } t) stop.CancelAfter(t);
            var stopped = false;
            var stderr = new StringBuilder();
            Task errTask = Task.CompletedTask, outTask = Task.CompletedTask, feed = Task.CompletedTask;
            Task<string>? outText = null;
            if (!o.Interactive)
            {
                errTask = Task.Run(async () =>
                {
                    while (await p.StandardError.ReadLineAsync(CancellationToken.None) is { } line)
                    {
                        lock (stderr) stderr.AppendLine(line);
                        if (o.StopOnStderr?.Invoke(line) == true) { stopped = true; Kill(p); }
                    }
                }, CancellationToken.None);
                if (capture) outText = p.StandardOutput.ReadToEndAsync(CancellationToken.None);
                else if (o.Stdout is { } sink) outTask = p.StandardOutput.BaseStream.CopyToAsync(sink, stop.Token);
                else outTask = o.ReadStdout!(p.StandardOutput.BaseStream);
                if (o.Stdin is { } src)
                    feed = Task.Run(async () =>
                    {
                        try { await src.CopyToAsync(p.StandardInput.BaseStream, stop.Token); }
                        catch (IOException) { } // the program stopped reading: its exit code says why
                        catch (OperationCanceledException) { }
                        finally { try { p.StandardInput.Close(); } catch (IOException) { } }
                    }, CancellationToken.None);
                else if (!o.InheritStdin) p.StandardInput.Close();
            }
            var timedOut = false;
            try
            {
                await outTask;
                await p.WaitForExitAsync(stop.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested && o.Timeout is not null)
            {
                timedOut = true;
            }
            finally
            {
                if (!p.HasExited)
                {
                    Kill(p);
                    await p.WaitForExitAsync(CancellationToken.None);
                }
                await feed;
            }
            ct.ThrowIfCancellationRequested();
            await errTask;
            var stdout = outText is null ? "" : await outText;
            string err;
            lock (stderr) err = stderr.ToString();
            return new HostProgramResult(p.ExitCode, stdout, err, timedOut, stopped);
        }
    }

    /// <summary>The first lines of a program's output, on one line.</summary>
    public static string FirstLines(string s, int n = 6)
    {
        var lines = s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return string.Join("; ", lines.Take(n));
    }

    static string Detail(HostProgramResult r) => FirstLines(r.Stderr.Trim().Length > 0 ? r.Stderr : r.Stdout);

    static string Name(string program, List<string> argv)
    {
        var s = Path.GetFileName(program) + (argv.Count > 0 ? " " + string.Join(' ', argv) : "");
        return s.Length <= 160 ? s : s[..157] + "...";
    }

    static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture) + " s";

    static Exception Fail(HostProgramOptions o, string program, int? code, string message)
    {
        var e = new HostProgramException(o.What is { Length: > 0 } w ? $"{w}: {message}" : message, program, code);
        return o.Error?.Invoke(e) ?? e;
    }

    static void Kill(Process p)
    {
        try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
    }
}
