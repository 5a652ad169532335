// Files.RemoveTree and HostProgram (Hull.Linux) are used all over hulld.
global using Hull.Linux;
