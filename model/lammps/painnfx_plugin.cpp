// Registers pair style `painnfx` with LAMMPS's PLUGIN package (`plugin load painnfx_lammps_*.so`).
#include "lammpsplugin.h"
#include "version.h"

#include "pair_painnfx.h"

using namespace LAMMPS_NS;

static Pair* create_painnfx(LAMMPS* lmp) { return new PairPainnfx(lmp); }

extern "C" void lammpsplugin_init(void* lmp, void* handle, void* regfunc) {
    lammpsplugin_t plugin;
    auto register_plugin = (lammpsplugin_regfunc)regfunc;
    plugin.version = LAMMPS_VERSION;
    plugin.style = "pair";
    plugin.name = "painnfx";
    plugin.info = "painnfx PaiNN with per-layer ghost exchange";
    plugin.author = "painnfx";
    plugin.creator.v1 = (lammpsplugin_factory1*)&create_painnfx;
    plugin.handle = handle;
    (*register_plugin)(&plugin, lmp);
}
