using System.CommandLine;
using Hull.Api;
using Hull.Registry;

namespace Hull.Cli;

/// <summary>`hull image pull REF`: pulls an image from an OCI (Docker v2) registry into hulld's image store.</summary>
public static partial class CliApp
{
    static Command ImagePullCommand()
    {
        var reference = new Argument<string>("reference") { Description =
            "host[:port]/repository[:tag][@sha256:digest], e.g. registry.example.com:5000/app:1.0" };
        var alias = new Option<string>("--alias") { Description =
            "An alias for the image (the reference itself always becomes one)" };
        var username = new Option<string>("--username",
            "-u") { Description = "Registry user (Basic auth or the registry's token server)" };
        var password = new Option<string>("--password",
            "-p") { Description = "The user's password (see also --password-stdin)" };
        var passwordStdin = new Option<bool>("--password-stdin") { Description = "Read the password from stdin" };
        var authfile = new Option<string>("--authfile") { Description =
            "Credentials file in auth.json format, as podman/skopeo/docker login write it (default: " +
            "$REGISTRY_AUTH_FILE)" };
        var insecure = new Option<bool>("--insecure") { Description =
            "Use plain http (registries on loopback always do)" };
        var pull = new Command("pull", "Pull an image from an OCI (Docker v2) registry") { reference, alias, username,
            password, passwordStdin, authfile, insecure };
        Act(pull, async (pr, c, ct) =>
        {
            var text = pr.GetValue(reference)!;
            if (!ImageReference.TryParse(text, out var parsed, out var error)) throw new CliException(error!);
            var req = new ImagePullRequest { Reference = text, Alias = pr.GetValue(alias),
                Insecure = pr.GetValue(insecure) };
            var user = pr.GetValue(username);
            var pass = pr.GetValue(password);
            if (pr.GetValue(passwordStdin))
            {
                if (pass is not null) throw new CliException(
                    "--password and --password-stdin were both given: use one");
                pass = (await Console.In.ReadToEndAsync(ct)).TrimEnd('\r', '\n');
            }
            if (pass is not null && user is null) throw new CliException(
                "a password was given without --username: give both");
            if (user is not null)
            {
                if (pass is null) throw new CliException(
                    $"no password for user '{user}': give --password or --password-stdin");
                (req.Username, req.Password) = (user, pass);
            }
            else if ((pr.GetValue(authfile) ?? Environment.GetEnvironmentVariable(
                "REGISTRY_AUTH_FILE")) is { Length: > 0 } file)
            {
                if (!File.Exists(file)) throw new CliException(
                    $"credentials file {file} does not exist: give an auth.json written by podman login, skopeo " +
                    "login or docker login");
                try
                {
                    if (AuthFileReader.Find(file, parsed!.Registry) is { } found) (req.Username, req.Password) = found;
                }
                catch (RegistryException e) { throw new CliException(e.Message); }
            }
            await Err.WriteLineAsync($"Pulling {parsed}");
            using var p = new ProgressLine();
            var img = await c.PullImageAsync(req, p, ct);
            Out.WriteLine($"Image pulled with fingerprint: {img.Fingerprint}");
            return 0;
        });
        return pull;
    }
}
