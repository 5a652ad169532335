using System.CommandLine;
using Hull.Api;
using Hull.Linux;

namespace Hull.Cli;

/// <summary>image: import, pull, export, list, alias and delete images.</summary>
public static partial class CliApp
{
    static Command ImageCommand()
    {
        var image = new Command("image", "Manage images");
        {
            var list = new Command("list", "List images");
            Act(list, async (pr, c, ct) =>
            {
                var imgs = await c.ListImagesAsync(ct);
                if (Output.Structured(Format(pr), imgs, Output.Pretty.ListImage, Out)) return 0;
                Output.Table(Out, ["ALIAS", "FINGERPRINT", "TYPE", "OS", "RELEASE", "SIZE", "DESCRIPTION", "CREATED"],
                    imgs.Select(i => new[] { string.Join(",", i.Aliases), i.Fingerprint[..12], i.Type,
                        i.Properties.GetValueOrDefault("os", ""), i.Properties.GetValueOrDefault("release", ""),
                        Output.Size(i.Size), i.Description, Output.Time(i.CreatedAt) }));
                return 0;
            });
            image.Subcommands.Add(list);
        }
        {
            var file = new Argument<string>("file") { Description =
                "A rootfs tarball (tar, tar.gz, tar.xz), an Incus/LXD unified image (a tarball or directory with " +
                "metadata.yaml and rootfs/), an OCI image layout directory, or with --vm a disk image" };
            var aliasOpt = new Option<string>("--alias") { Description = "An alias for the image" };
            var vm = new Option<bool>("--vm") { Description = "The file is a VM disk image" };
            var refOpt = new Option<string>("--ref") { Description =
                "For an OCI layout holding several images: the tag to import" };
            var import = new Command("import", "Import an image file or OCI image layout") { file, aliasOpt, vm,
                refOpt };
            Act(import, async (pr, c, ct) =>
            {
                var f = pr.GetValue(file)!;
                using var p = new ProgressLine();
                Image img;
                if (Directory.Exists(f) && File.Exists(Path.Combine(f, "metadata.yaml"))
                    && Directory.Exists(Path.Combine(f, "rootfs")))
                {
                    // An Incus/LXD image directory (metadata.yaml, rootfs/): sent as a unified image tarball.
                    Image? unified = null;
                    var from = $"imported from {Path.GetFileName(Path.GetFullPath(f).TrimEnd('/'))}";
                    await HostProgram.RunAsync("tar", ["--numeric-owner", "-cf", "-", "-C", f, "."], new()
                    {
                        What = $"packing {f}",
                        ReadStdout = async s => unified = await c.ImportImageAsync(s, InstanceTypes.Container,
                            pr.GetValue(aliasOpt), from, p, ct),
                        Error = e => new CliException(e.Message),
                    }, ct);
                    img = unified!;
                }
                else if (Directory.Exists(f))
                {
                    if (!File.Exists(Path.Combine(f, "oci-layout"))) throw new CliException(
                        $"{f} is a directory but neither an OCI image layout (no oci-layout file) nor an image " +
                        "directory (metadata.yaml and rootfs/): give a rootfs tarball or a layout written by skopeo " +
                        "or umoci");
                    Image? layoutImage = null;
                    await HostProgram.RunAsync("tar", ["-cf", "-", "-C", f, "."], new()
                    {
                        What = $"packing {f}",
                        ReadStdout = async s => layoutImage =
                            await c.ImportOciLayoutAsync(s, pr.GetValue(refOpt), pr.GetValue(aliasOpt),
                            $"imported from OCI layout {Path.GetFileName(Path.GetFullPath(f).TrimEnd('/'))}", p, ct),
                        Error = e => new CliException(e.Message),
                    }, ct);
                    img = layoutImage!;
                }
                else
                {
                    if (!File.Exists(f)) throw new CliException(
                        $"{f} does not exist: give the path of a rootfs tarball or an OCI layout directory");
                    await using var s = File.OpenRead(f);
                    img = await c.ImportImageAsync(s, pr.GetValue(vm) ? InstanceTypes.Vm : InstanceTypes.Container,
                        pr.GetValue(aliasOpt), $"imported from {Path.GetFileName(f)}", p, ct);
                }
                Out.WriteLine($"Image imported with fingerprint: {img.Fingerprint}");
                return 0;
            });
            image.Subcommands.Add(import);
        }
        image.Subcommands.Add(ImagePullCommand());
        {
            var img = new Argument<string>("image");
            var file = new Argument<string>("file") { Description = "Where to write the image file" };
            var export = new Command("export", "Write an image's file (rootfs tarball or disk image)") { img, file };
            Act(export, async (pr, c, ct) =>
            {
                await using var s = await c.ExportImageAsync(pr.GetValue(img)!, ct);
                await using var o = File.Create(pr.GetValue(file)!);
                await s.CopyToAsync(o, ct);
                return 0;
            });
            image.Subcommands.Add(export);
        }
        {
            var img = new Argument<string>("image");
            var info = new Command("info", "Show an image") { img };
            Act(info, async (pr, c, ct) =>
            {
                Output.Structured(Format(pr) == "table" ? "yaml" : Format(pr),
                    await c.GetImageAsync(pr.GetValue(img)!, ct), Output.Pretty.Image, Out);
                return 0;
            });
            image.Subcommands.Add(info);
        }
        {
            var img = new Argument<string>("image");
            var del = new Command("delete", "Delete an image no instance uses") { img };
            Act(del, async (pr, c, ct) => { await c.DeleteImageAsync(pr.GetValue(img)!, ct); return 0; });
            image.Subcommands.Add(del);
        }
        var alias = new Command("alias", "Manage image aliases");
        {
            var list = new Command("list", "List aliases");
            Act(list, async (pr, c, ct) =>
            {
                var a = await c.ListImageAliasesAsync(ct);
                if (Output.Structured(Format(pr), a, Output.Pretty.ListImageAlias, Out)) return 0;
                Output.Table(Out, ["ALIAS", "FINGERPRINT"], a.Select(x => new[] { x.Name, x.Target[..12] }));
                return 0;
            });
            alias.Subcommands.Add(list);
            var an = new Argument<string>("alias");
            var target = new Argument<string>("target") { Description = "Image fingerprint or alias" };
            var create = new Command("create", "Create or move an alias") { an, target };
            Act(create, async (pr, c, ct) => { await c.SetImageAliasAsync(pr.GetValue(an)!, pr.GetValue(target)!,
                ct); return 0; });
            alias.Subcommands.Add(create);
            var dn = new Argument<string>("alias");
            var delete = new Command("delete", "Delete an alias") { dn };
            Act(delete, async (pr, c, ct) => { await c.DeleteImageAliasAsync(pr.GetValue(dn)!, ct); return 0; });
            alias.Subcommands.Add(delete);
        }
        image.Subcommands.Add(alias);
        return image;
    }
}
