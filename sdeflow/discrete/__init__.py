"""Discrete-state diffusion: token processes (masked, uniform), exact categorical draws, samplers (ancestral,
first-hitting) and the exact oracle of small product-categorical mixtures.

- :mod:`.processes`: the schedule ``alpha(t)`` and the masked and uniform forward kernels;
- :mod:`.categorical`: exact float64 draws and the float32 race's bias;
- :mod:`.samplers`: ancestral steps, discrete flow matching's Euler steps and the first-hitting sampler;
- :mod:`.conversions`: SEDD's concrete score, discrete flow matching's rates and guidance from the posterior;
- :mod:`.likelihood`: the masked-diffusion NELBO (training loss; exact by enumeration for small problems);
- :mod:`.model`: a token network as the samplers' model (with classifier-free guidance) and its training losses;
- :mod:`.exact`: mixtures of product categoricals, their clean-token posteriors and sampler output laws.
"""

from .categorical import draw, exact_rates, float32_race_bias
from .conversions import concrete_score, dfm_rates, guided
from .exact import ProductMixture, TokenOracle
from .likelihood import (MaskedNELBO, bits_per_token, generalized_kl, masked_nelbo_exact, nelbo_estimate,
                         score_entropy)
from .model import TOKEN_LOSSES, TokenLoss, TokenModel, carry_over
from .processes import TOKEN_PROCESSES, Masked, TokenProcess, TokenSchedule, Uniform, process_of
from .samplers import (TOKEN_SAMPLERS, TokenResult, all_noise, ancestral, check_start, dfm_euler, euler_probs,
                       first_hitting, hitting_law, leap_probs, output_law, remask_probs, sample_tokens, step_probs, tau_leaping)

__all__ = ["TOKEN_LOSSES", "TOKEN_PROCESSES", "TOKEN_SAMPLERS", "all_noise", "ancestral", "bits_per_token", "carry_over",
           "check_start", "concrete_score", "dfm_euler", "dfm_rates", "draw", "euler_probs", "exact_rates",
           "first_hitting", "float32_race_bias", "generalized_kl", "guided", "hitting_law", "leap_probs", "Masked",
           "masked_nelbo_exact", "MaskedNELBO", "nelbo_estimate", "output_law", "process_of", "ProductMixture", "remask_probs",
           "sample_tokens", "score_entropy", "step_probs", "tau_leaping", "TokenLoss", "TokenModel", "TokenOracle",
           "TokenProcess", "TokenResult", "TokenSchedule", "Uniform"]
