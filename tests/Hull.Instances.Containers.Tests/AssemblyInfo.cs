[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
// Each test runs its own hulld with real containers; on a 2-core host one at a time is enough.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
