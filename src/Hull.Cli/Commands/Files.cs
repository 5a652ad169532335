using System.CommandLine;
using Hull.Api;
using Hull.Linux;
using Hull.Sdk;

namespace Hull.Cli;

/// <summary>file: push, pull, delete, edit and list the files of an instance.</summary>
public static partial class CliApp
{
    static (string Instance, string Path) SplitTarget(string target)
    {
        var i = target.IndexOf('/');
        if (i <= 0) throw new CliException($"'{target}' is not INSTANCE/PATH: write e.g. c1/etc/hosts");
        return (target[..i], target[i..]);
    }

    static Command FileCommand()
    {
        var file = new Command("file", "Move files in and out of instances");
        {
            var src = new Argument<string>("source") { Description = "Local file ('-' for stdin)" };
            var dst = new Argument<string>("target") { Description = "INSTANCE/PATH" };
            var mode = new Option<string>("--mode") { Description =
                "File mode in octal (default: the local file's, or 0644)" };
            var uid = new Option<int>("--uid") { Description = "Owner uid inside the instance" };
            var gid = new Option<int>("--gid") { Description = "Owner gid inside the instance" };
            var push = new Command("push", "Copy a local file into an instance") { src, dst, mode, uid, gid };
            Act(push, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(dst)!);
                var s = pr.GetValue(src)!;
                var m = pr.GetValue(mode) is { } ms ? ParseMode(ms) : s == "-" ? 0b110_100_100
                    : (int)File.GetUnixFileMode(s) & 0xFFF;
                if (path.EndsWith('/')) path += Path.GetFileName(s);
                await using var input = s == "-" ? Console.OpenStandardInput() : File.OpenRead(s);
                await c.PushFileAsync(inst, path, input, m, pr.GetValue(uid), pr.GetValue(gid), ct);
                return 0;
            });
            file.Subcommands.Add(push);
        }
        {
            var src = new Argument<string>("source") { Description = "INSTANCE/PATH" };
            var dst = new Argument<string>("target") { Description = "Local file or directory ('-' for stdout)" };
            var pull = new Command("pull", "Copy a file out of an instance") { src, dst };
            Act(pull, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(src)!);
                using var f = await c.PullFileAsync(inst, path, ct);
                if (f.Content is null) throw new CliException($"{path} is a directory: pull its files one by one");
                var target = pr.GetValue(dst)!;
                if (target == "-") { await f.Content.CopyToAsync(Console.OpenStandardOutput(), ct); return 0; }
                if (Directory.Exists(target)) target = Path.Combine(target, Path.GetFileName(path));
                await using (var o = File.Create(target)) await f.Content.CopyToAsync(o, ct);
                File.SetUnixFileMode(target, (UnixFileMode)(f.Entry.Mode & 0b111_111_111));
                return 0;
            });
            file.Subcommands.Add(pull);
        }
        {
            var target = new Argument<string>("target") { Description = "INSTANCE/PATH" };
            var del = new Command("delete", "Delete a file in an instance") { target };
            Act(del, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(target)!);
                await c.DeleteFileAsync(inst, path, ct);
                return 0;
            });
            file.Subcommands.Add(del);
        }
        {
            var target = new Argument<string>("target") { Description = "INSTANCE/PATH" };
            var edit = new Command("edit", "Edit a file in an instance with $EDITOR") { target };
            Act(edit, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(target)!);
                byte[] content = [];
                var mode = 0b110_100_100;
                try
                {
                    using var f = await c.PullFileAsync(inst, path, ct);
                    if (f.Content is null) throw new CliException($"{path} is a directory");
                    var ms = new MemoryStream();
                    await f.Content.CopyToAsync(ms, ct);
                    content = ms.ToArray();
                    mode = f.Entry.Mode;
                }
                catch (HullException e) when (e.StatusCode == 404) { }
                var edited = await EditAsync(content, Path.GetFileName(path), ct);
                await c.PushFileAsync(inst, path, new MemoryStream(edited), mode, 0, 0, ct);
                return 0;
            });
            file.Subcommands.Add(edit);
        }
        return file;
    }

    static int ParseMode(string s)
    {
        try
        {
            var m = Convert.ToInt32(s, 8);
            if (m is >= 0 and <= 0b111_111_111_111) return m;
        }
        catch (FormatException) { }
        catch (OverflowException) { }
        throw new CliException($"--mode {s} is invalid: use an octal mode from 0 to 7777, e.g. 0644");
    }

    static async Task<byte[]> EditAsync(byte[] content, string name, CancellationToken ct)
    {
        var editor = Environment.GetEnvironmentVariable("VISUAL") ?? Environment.GetEnvironmentVariable("EDITOR")
            ?? "vi";
        var tmp = Path.Combine(Path.GetTempPath(), $"hull-edit-{Guid.NewGuid():N}-{name}");
        await File.WriteAllBytesAsync(tmp, content, ct);
        try
        {
            // $VISUAL/$EDITOR is a command line (e.g. "code -w") as git takes it: the shell splits it; the file is
            // passed as an argument.
            var r = await HostProgram.ExecAsync("/bin/sh", ["-c", editor + " \"$0\"", tmp],
                new() { Interactive = true, Error = e => new CliException(e.Message) }, ct);
            if (r.ExitCode != 0) throw new CliException(
                $"the editor ({editor}) exited with status {r.ExitCode}: nothing was changed");
            return await File.ReadAllBytesAsync(tmp, ct);
        }
        finally { File.Delete(tmp); }
    }

    /// <summary>Lets the user edit <paramref name="value"/> as indented JSON in $EDITOR; a result that is empty or not
    /// valid JSON changes nothing.</summary>
    static async Task<T> EditJsonAsync<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type,
        string name, CancellationToken ct) where T : class
    {
        var edited = await EditAsync(System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(value, type), name, ct);
        try
        {
            return System.Text.Json.JsonSerializer.Deserialize(edited, type)
                ?? throw new CliException("the edited config is empty");
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new CliException($"the edited config is not valid JSON ({e.Message}): nothing was changed");
        }
    }
}
