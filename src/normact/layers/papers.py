"""The papers that define the layers, one constant each, shared by the registry entries."""

from normact.registry import Paper

BATCH_NORM = Paper(
    "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift",
    2015,
    "1502.03167",
    "Ioffe, Szegedy",
)
LAYER_NORM = Paper("Layer Normalization", 2016, "1607.06450", "Ba, Kiros, Hinton")
INSTANCE_NORM = Paper(
    "Instance Normalization: The Missing Ingredient for Fast Stylization",
    2016,
    "1607.08022",
    "Ulyanov, Vedaldi, Lempitsky",
)
GROUP_NORM = Paper("Group Normalization", 2018, "1803.08494", "Wu, He")
RMS_NORM = Paper("Root Mean Square Layer Normalization", 2019, "1910.07467", "Zhang, Sennrich")
SCALE_NORM = Paper(
    "Transformers without Tears: Improving the Normalization of Self-Attention",
    2019,
    "1910.05895",
    "Nguyen, Salazar",
)
DYT = Paper("Transformers without Normalization", 2025, "2503.10622", "Zhu, Chen, He, LeCun, Liu")

RELU = Paper("Rectified Linear Units Improve Restricted Boltzmann Machines", 2010, None, "Nair, Hinton")
RELU2 = Paper(
    "ReLU² Wins: Discovering Efficient Activation Functions for Sparse LLMs",
    2024,
    "2402.03804",
    "Zhang, Song, Yu, Han, Lin, Xiao, Song, Liu, Mi, Sun",
)
GELU = Paper("Gaussian Error Linear Units (GELUs)", 2016, "1606.08415", "Hendrycks, Gimpel")
SILU = Paper(
    "Sigmoid-Weighted Linear Units for Neural Network Function Approximation in Reinforcement Learning",
    2017,
    "1702.03118",
    "Elfwing, Uchibe, Doya",
)
SWISH = Paper("Searching for Activation Functions", 2017, "1710.05941", "Ramachandran, Zoph, Le")
MISH = Paper("Mish: A Self Regularized Non-Monotonic Activation Function", 2019, "1908.08681", "Misra")
GOLU = Paper(
    "Gompertz Linear Units: Leveraging Asymmetry for Enhanced Learning Dynamics",
    2025,
    "2502.03654",
    "Das, Safari, Adriaensen, Hutter",
)
GLU_VARIANTS = Paper("GLU Variants Improve Transformer", 2020, "2002.05202", "Shazeer")
